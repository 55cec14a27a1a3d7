//! Parsing only what matching reads.
//!
//! Search criteria read a resource through their parameters' paths, and every path starts at
//! one top-level element (`Observation.subject...`, `(Observation.value as Quantity)`,
//! `Observation.effective`). A [`Projection`] counts those elements for a set of criteria;
//! [`Projection::parse`] builds a `serde_json::Value` holding only them (and `resourceType`),
//! stepping over every other element without building it, as a [`Node`] that borrows its
//! strings from the input. Matching the result gives exactly
//! what matching the whole resource gives, for every criteria the projection was built from
//! (a property test in the index checks this); elements nobody reads (narrative, `meta`,
//! `encounter`, components...) cost a scan instead of a tree of allocations.

use foldhash::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::criteria::Criteria;
use crate::json::{NUMBER_TOKEN, Node, Text, object};
use crate::path::{Path, Step};

/// The top-level elements some criteria read, counted per criteria so that criteria can be
/// added and taken out in place.
#[derive(Debug, Default, Clone)]
pub struct Projection {
    /// Element name → how many criteria read it by exactly that name (`valueQuantity`),
    /// and how many by name with its choice types (`effective` reads `effective`,
    /// `effectiveDateTime`, `effectivePeriod`...). One map, so a wanted key costs one lookup.
    reads: HashMap<String, (u32, u32)>,
    /// Criteria that read the resource as a whole (a path with no steps): parse it whole.
    whole: u32,
}

/// What one path's first step reads at the top level.
enum Reads<'a> {
    Exact(&'a str),
    Named(&'a str),
    Whole,
}

fn first_read(path: &Path) -> Reads<'_> {
    match path.steps.first() {
        Some(Step::Field(name)) => Reads::Named(name),
        Some(Step::Choice(key)) => Reads::Exact(key),
        // filters at the root, or no step at all: the resource itself
        Some(Step::RefType(_) | Step::FieldEquals(..)) | None => Reads::Whole,
    }
}

fn reads(criteria: &Criteria) -> impl Iterator<Item = Reads<'_>> {
    criteria.clauses.iter().flat_map(|clause| {
        // a parameter outside the supported subset never matches and reads nothing
        let paths: &[Path] = clause.param.paths.as_deref().unwrap_or(&[]);
        paths.iter().map(first_read)
    })
}

impl Projection {
    /// Count what `criteria` read.
    pub fn add(&mut self, criteria: &Criteria) {
        for r in reads(criteria) {
            match r {
                Reads::Exact(k) => self.reads.entry(k.to_owned()).or_default().0 += 1,
                Reads::Named(k) => self.reads.entry(k.to_owned()).or_default().1 += 1,
                Reads::Whole => self.whole += 1,
            }
        }
    }

    /// Take back what [`Projection::add`] counted for the same criteria.
    pub fn remove(&mut self, criteria: &Criteria) {
        for r in reads(criteria) {
            let (k, named) = match r {
                Reads::Exact(k) => (k, false),
                Reads::Named(k) => (k, true),
                Reads::Whole => {
                    self.whole = self.whole.saturating_sub(1);
                    continue;
                }
            };
            if let Some(n) = self.reads.get_mut(k) {
                let count = if named { &mut n.1 } else { &mut n.0 };
                *count = count.saturating_sub(1);
                if *n == (0, 0) {
                    self.reads.remove(k);
                }
            }
        }
    }

    /// No criteria are counted.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.whole == 0
    }

    /// Whether some criteria read the whole resource, so a projection saves nothing.
    pub fn is_whole(&self) -> bool {
        self.whole > 0
    }

    /// Whether the top-level element `key` is read.
    pub fn wants(&self, key: &str) -> bool {
        if key == "resourceType" || self.reads.contains_key(key) {
            return true;
        }
        // a choice element: its name, then the type's name from an upper-case letter
        // (`multipleBirthInteger` is `multipleBirth` + `Integer`)
        key.char_indices()
            .skip(1)
            .filter(|(_, c)| c.is_ascii_uppercase())
            .any(|(i, _)| {
                self.reads
                    .get(&key[..i])
                    .is_some_and(|(_, named)| *named > 0)
            })
    }

    /// Parse a resource keeping only the elements these criteria read (all of it when some
    /// criteria read it whole), as a [`Node`] borrowing from `json`. The input must be one
    /// JSON object; what is kept is parsed exactly as a whole parse would parse it.
    pub fn parse<'a>(&self, json: &'a [u8]) -> serde_json::Result<Node<'a>> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let node = de.deserialize_map(Projected(self))?;
        de.end()?;
        Ok(node)
    }
}

struct Projected<'p>(&'p Projection);

impl<'de> Visitor<'de> for Projected<'_> {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let Some(Text(first)) = map.next_key::<Text<'de>>()? else {
            return Ok(Node::Object(Vec::new()));
        };
        if first == NUMBER_TOKEN {
            return Err(de::Error::invalid_type(
                de::Unexpected::Other("a number"),
                &self,
            ));
        }
        let whole = self.0.is_whole();
        object(first, map, |k| whole || self.0.wants(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;

    fn projection(criteria: &[&str]) -> Projection {
        let mut p = Projection::default();
        for c in criteria {
            p.add(&Criteria::parse(c).unwrap_or_else(|e| panic!("{c}: {e}")));
        }
        p
    }

    #[test]
    fn keeps_what_the_paths_start_at_and_steps_over_the_rest() {
        let p = projection(&[
            "Observation?patient=Patient/1&category=laboratory",
            "Observation?date=ge2024-01-01",
            "Observation?value-quantity=gt5",
        ]);
        let json = br#"{"resourceType":"Observation","id":"x","meta":{"tag":[{"code":"a"}]},
            "subject":{"reference":"Patient/1"},"category":[{"coding":[{"code":"laboratory"}]}],
            "effectivePeriod":{"start":"2024-02-01"},"valueQuantity":{"value":6},
            "valueString":"not read","encounter":{"reference":"Encounter/e"},
            "text":{"div":"<div>\u00e9\"</div>"}}"#;
        let v = p.parse(json).unwrap();
        let keys: Vec<&str> = v.members().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "resourceType",
                "subject",
                "category",
                "effectivePeriod",
                "valueQuantity"
            ]
        );
        let full = Node::parse(json).unwrap();
        for k in keys {
            assert_eq!(
                v.get(k),
                full.get(k),
                "{k} is parsed as a whole parse would"
            );
        }
    }

    #[test]
    fn counts_go_back_to_nothing() {
        let c = Criteria::parse("Observation?code=1&date=gt2020").unwrap();
        let mut p = Projection::default();
        p.add(&c);
        p.add(&c);
        assert!(p.wants("code") && p.wants("effectiveDateTime"));
        p.remove(&c);
        assert!(p.wants("code"), "one criteria still reads it");
        p.remove(&c);
        assert!(p.is_empty());
        assert!(!p.wants("code") && p.wants("resourceType"));
    }

    #[test]
    fn escaped_keys_and_bad_input_are_handled() {
        let p = projection(&["Observation?code=1"]);
        let v = p
            .parse(br#"{"resourceType":"Observation","c\u006fde":{"text":"t"}}"#)
            .unwrap();
        assert_eq!(
            v.get("code"),
            Some(&Node::parse(br#"{"text":"t"}"#).unwrap())
        );
        for bad in [
            &b"[1,2]"[..],
            b"\"x\"",
            b"{\"code\":",
            b"{\"a\":1} trailing",
            b"",
            b"{\"meta\":[1,}",
            b"5",
        ] {
            assert!(p.parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn whole_resource_readers_parse_it_whole() {
        // a composite rooted at the resource reads it as a whole (none in R4 Observation is,
        // so build one by hand)
        let p = Projection {
            whole: 1,
            ..Projection::default()
        };
        let json = br#"{"resourceType":"X","a":1}"#;
        assert_eq!(p.parse(json).unwrap(), Node::parse(json).unwrap());
    }
}
