//! An index over many subscriptions' criteria, so that the work per resource is proportional
//! to the candidate subscriptions rather than to all of them.
//!
//! Each criteria is posted under the keys of its most selective equality clause (`_id`, a
//! reference such as `patient=Patient/1`, an identifier, a system-qualified code...); a
//! criteria without such a clause goes on the "broad" list of its resource type. For a
//! resource, the index evaluates each indexed parameter once, looks up the keys the resource
//! offers, and runs the full criteria only for those candidates and the broad list. The
//! result is exactly what a linear scan with [`Criteria::matches_at`] gives (a property test
//! checks this).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::criteria::{Clause, Criteria, QueryValue};
use crate::criteria_keys::{for_each_node_key, query_key};
use crate::registry::{ParamType, SearchParam};

struct Entry<T> {
    value: T,
    criteria: Criteria,
}

/// Normalised key → entries posted under it.
type Postings = HashMap<String, Vec<u32>>;

#[derive(Default)]
struct TypeIndex {
    /// The parameters some criteria are posted under, evaluated once per resource, each with
    /// its postings: normalised key → entries.
    indexed: Vec<(Arc<SearchParam>, Postings)>,
    broad: Vec<u32>,
}

/// Criteria of many subscriptions, grouped by (partition, resource type). The partition is
/// the tenant in the hub, so tenants never see each other's matches.
pub struct MatchIndex<T> {
    entries: Vec<Entry<T>>,
    by_type: HashMap<(String, String), TypeIndex>,
}

impl<T> Default for MatchIndex<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            by_type: HashMap::new(),
        }
    }
}

/// How selective a clause is for indexing: lower is better; `None` if it cannot be indexed.
fn rank(clause: &Clause) -> Option<u8> {
    if clause.modifier.is_some() || clause.values.is_empty() {
        return None;
    }
    let mut keys = clause
        .values
        .iter()
        .map(|v| query_key(clause.param.kind, v));
    if keys.any(|k| k.is_none()) {
        return None;
    }
    let code = clause.param.code.as_str();
    Some(match (code, clause.param.kind) {
        ("_id", _) => 0,
        (_, ParamType::Reference) => 1,
        ("identifier", _) => 1,
        (_, ParamType::Token) => {
            let qualified = clause
                .values
                .iter()
                .all(|v| matches!(v, QueryValue::Token { system: Some(s), .. } if !s.is_empty()));
            if qualified { 2 } else { 3 }
        }
        _ => return None,
    })
}

impl<T> MatchIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add criteria with the value to return when they match.
    pub fn insert(&mut self, partition: &str, criteria: Criteria, value: T) {
        let n = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        let ti = self
            .by_type
            .entry((partition.to_owned(), criteria.resource_type.clone()))
            .or_default();
        let best = criteria
            .clauses
            .iter()
            .filter_map(|c| rank(c).map(|r| (r, c)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, c)| c);
        match best {
            Some(clause) => {
                let slot = match ti
                    .indexed
                    .iter()
                    .position(|(p, _)| Arc::ptr_eq(p, &clause.param))
                {
                    Some(i) => i,
                    None => {
                        ti.indexed.push((Arc::clone(&clause.param), HashMap::new()));
                        ti.indexed.len() - 1
                    }
                };
                let postings = &mut ti.indexed[slot].1;
                let mut keys: Vec<String> = clause
                    .values
                    .iter()
                    .filter_map(|v| query_key(clause.param.kind, v))
                    .collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    postings.entry(k).or_default().push(n);
                }
            }
            None => ti.broad.push(n),
        }
        self.entries.push(Entry { value, criteria });
    }

    /// Values of every criteria in `partition` that `resource` matches, in insertion order.
    pub fn matches(&self, partition: &str, resource: &Value, now_micros: i64) -> Vec<&T> {
        let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let Some(ti) = self.by_type.get(&(partition.to_owned(), rtype.to_owned())) else {
            return Vec::new();
        };
        let mut candidates: Vec<u32> = ti.broad.clone();
        let mut scratch = String::new();
        for (param, postings) in &ti.indexed {
            let Ok(paths) = &param.paths else { continue };
            for node in paths.iter().flat_map(|p| p.eval(resource)) {
                for_each_node_key(param.kind, node, &mut scratch, |k| {
                    if let Some(list) = postings.get(k) {
                        candidates.extend_from_slice(list);
                    }
                });
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|i| self.entries.get(i as usize))
            .filter(|e| e.criteria.matches_at(resource, now_micros))
            .map(|e| &e.value)
            .collect()
    }

    /// Values of every criteria in `partition` that `resource` matches, by scanning all of
    /// them: the reference the index is tested (and benchmarked) against.
    pub fn matches_linear(&self, partition: &str, resource: &Value, now_micros: i64) -> Vec<&T> {
        let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        if !self
            .by_type
            .contains_key(&(partition.to_owned(), rtype.to_owned()))
        {
            return Vec::new();
        }
        let mut members: Vec<u32> = Vec::new();
        if let Some(ti) = self.by_type.get(&(partition.to_owned(), rtype.to_owned())) {
            members.extend(&ti.broad);
            members.extend(ti.indexed.iter().flat_map(|(_, p)| p.values().flatten()));
        }
        members.sort_unstable();
        members.dedup();
        members
            .into_iter()
            .filter_map(|i| self.entries.get(i as usize))
            .filter(|e| e.criteria.matches_at(resource, now_micros))
            .map(|e| &e.value)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small deterministic generator (xorshift), so the property runs the same every time.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    const PATIENTS: &[&str] = &["p1", "p2", "p3"];
    const CODES: &[&str] = &["2345-7", "8867-4", "718-7"];
    const CATS: &[&str] = &["laboratory", "vital-signs"];

    fn clause(r: &mut Rng) -> String {
        match r.next() % 9 {
            0 => format!("patient=Patient/{}", r.pick(PATIENTS)),
            1 => format!("subject={}", r.pick(PATIENTS)),
            2 => format!("code=http://loinc.org|{}", r.pick(CODES)),
            3 => format!("code={},{}", r.pick(CODES), r.pick(CODES)),
            4 => format!("category={}", r.pick(CATS)),
            5 => format!("value-quantity=gt{}", r.next() % 10),
            6 => format!("status:not={}", r.pick(&["final", "amended"])),
            7 => format!("_id=o{}", r.next() % 4),
            _ => format!("code=|{}", r.pick(CODES)),
        }
    }

    fn resource(r: &mut Rng, i: u64) -> Value {
        json!({"resourceType": "Observation", "id": format!("o{}", i % 4),
            "status": r.pick(&["final", "amended", "preliminary"]),
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": r.pick(CATS)}]}],
            "code": {"coding": [{"system": r.pick(&["http://loinc.org", "urn:other"]), "code": r.pick(CODES)}]},
            "subject": {"reference": format!("Patient/{}", r.pick(PATIENTS))},
            "valueQuantity": {"value": r.next() % 12}})
    }

    #[test]
    fn indexed_matching_equals_a_linear_scan() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut index = MatchIndex::new();
        for n in 0..400 {
            let clauses: Vec<String> = (0..1 + r.next() % 3).map(|_| clause(&mut r)).collect();
            let c = format!("Observation?{}", clauses.join("&"));
            let tenant = if n % 7 == 0 { "other" } else { "t" };
            index.insert(
                tenant,
                Criteria::parse(&c).unwrap_or_else(|e| panic!("{c}: {e}")),
                n,
            );
        }
        index.insert("t", Criteria::parse("Patient?name=x").unwrap(), 9999);
        let mut total = 0;
        for i in 0..2000 {
            let res = resource(&mut r, i);
            let fast = index.matches("t", &res, 0);
            let slow = index.matches_linear("t", &res, 0);
            assert_eq!(fast, slow, "{res}");
            total += fast.len();
        }
        assert!(
            total > 1000,
            "the generator should produce plenty of matches, got {total}"
        );
    }

    #[test]
    fn partitions_are_separate() {
        let mut index = MatchIndex::new();
        index.insert("a", Criteria::parse("Observation?code=1").unwrap(), "a");
        index.insert("b", Criteria::parse("Observation?code=1").unwrap(), "b");
        let res = json!({"resourceType": "Observation", "code": {"coding": [{"code": "1"}]}});
        assert_eq!(index.matches("a", &res, 0), vec![&"a"]);
        assert!(index.matches("c", &res, 0).is_empty());
    }
}
