//! What matching reads from a resource, over two trees: `serde_json::Value`, which the rest of
//! the hub holds, and [`Node`], a lighter tree that borrows its strings from the input and
//! keeps object members in a vector (no key allocation, no hashing). Matching a resource as
//! a `Node` gives exactly what matching it as a `Value` gives: the evaluator is written once,
//! over [`Json`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Read access to a JSON tree.
pub trait Json: Sized {
    /// An object's member (`None` for other values).
    fn get(&self, key: &str) -> Option<&Self>;
    fn as_str(&self) -> Option<&str>;
    fn as_bool(&self) -> Option<bool>;
    /// A JSON number as a finite `f64` (not a string holding one).
    fn as_number(&self) -> Option<f64>;
    /// An array's items (`None` for other values).
    fn as_array(&self) -> Option<&[Self]>;
    fn is_null(&self) -> bool;
    fn is_object(&self) -> bool;
    /// An object's members in order (nothing for other values).
    fn members(&self) -> impl Iterator<Item = (&str, &Self)>;

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

impl Json for Value {
    fn get(&self, key: &str) -> Option<&Self> {
        self.as_object()?.get(key)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_bool(&self) -> Option<bool> {
        Value::as_bool(self)
    }
    fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Self]> {
        Value::as_array(self).map(Vec::as_slice)
    }
    fn is_null(&self) -> bool {
        Value::is_null(self)
    }
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
    fn members(&self) -> impl Iterator<Item = (&str, &Self)> {
        self.as_object()
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

/// A parsed JSON value whose strings point into the input where they have no escapes.
/// Object members keep their first position and their last value, as `serde_json::Value`
/// does with a repeated key.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    /// The number's text, as written.
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Parse one JSON value (trailing whitespace only), with serde_json's grammar and
    /// nesting limit.
    pub fn parse(json: &'a [u8]) -> serde_json::Result<Node<'a>> {
        serde_json::from_slice(json)
    }
}

impl Json for Node<'_> {
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Node::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            Node::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<f64> {
        match self {
            Node::Number(n) => n.parse::<f64>().ok().filter(|x| x.is_finite()),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&[Self]> {
        match self {
            Node::Array(items) => Some(items),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }
    fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }
    fn members(&self) -> impl Iterator<Item = (&str, &Self)> {
        let members: &[(Cow<'_, str>, Node<'_>)] = match self {
            Node::Object(m) => m,
            _ => &[],
        };
        members.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

/// A string as it was read: borrowed from the input when it has no escapes.
pub(crate) struct Text<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// The key serde_json (with `arbitrary_precision`) hands a number under, as a one-member map.
pub(crate) const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Members past this many are found through a hash map while an object is built, so a
/// huge object costs linear time, not quadratic.
const SCAN_MEMBERS: usize = 16;

/// Collect an object's members that `keep` accepts (the others are stepped over without
/// being built); `first` is its first key, already read.
pub(crate) fn object<'de, A: MapAccess<'de>>(
    first: Cow<'de, str>,
    mut map: A,
    keep: impl Fn(&str) -> bool,
) -> Result<Node<'de>, A::Error> {
    let mut members: Vec<(Cow<'de, str>, Node<'de>)> = Vec::new();
    let mut positions: Option<HashMap<String, usize>> = None;
    let mut next = Some(first);
    while let Some(key) = next.take() {
        if keep(&key) {
            let value = map.next_value::<Node<'de>>()?;
            let seen = match &mut positions {
                Some(p) => p.get(key.as_ref()).copied(),
                None => members.iter().position(|(k, _)| *k == key),
            };
            match seen {
                // a repeated key keeps its first place and takes the last value
                Some(i) => members[i].1 = value,
                None => {
                    if let Some(p) = &mut positions {
                        p.insert(key.to_string(), members.len());
                    } else if members.len() >= SCAN_MEMBERS {
                        let mut p: HashMap<String, usize> = members
                            .iter()
                            .enumerate()
                            .map(|(i, (k, _))| (k.to_string(), i))
                            .collect();
                        p.insert(key.to_string(), members.len());
                        positions = Some(p);
                    }
                    members.push((key, value));
                }
            }
        } else {
            map.next_value::<IgnoredAny>()?;
        }
        next = map.next_key::<Text<'de>>()?.map(|Text(k)| k);
    }
    Ok(Node::Object(members))
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        Ok(Node::Number(Cow::Owned(v.to_string())))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Node<'de>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let Some(Text(first)) = map.next_key::<Text<'de>>()? else {
            return Ok(Node::Object(Vec::new()));
        };
        if first == NUMBER_TOKEN {
            let Text(n) = map.next_value::<Text<'de>>()?;
            return Ok(Node::Number(n));
        }
        object(first, map, |_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same questions asked of both trees give the same answers.
    fn agree(json: &str) {
        let v: Value = serde_json::from_str(json).unwrap();
        let n = Node::parse(json.as_bytes()).unwrap();
        same(&v, &n, json);
    }

    fn same(v: &Value, n: &Node<'_>, at: &str) {
        assert_eq!(Json::as_str(v), Json::as_str(n), "{at}");
        assert_eq!(Json::as_bool(v), Json::as_bool(n), "{at}");
        assert_eq!(Json::as_number(v), n.as_number(), "{at}");
        assert_eq!(Json::is_null(v), Json::is_null(n), "{at}");
        assert_eq!(Json::is_object(v), Json::is_object(n), "{at}");
        let vm: Vec<&str> = v.members().map(|(k, _)| k).collect();
        let nm: Vec<&str> = n.members().map(|(k, _)| k).collect();
        assert_eq!(vm, nm, "{at}");
        for ((k, a), (_, b)) in v.members().zip(n.members()) {
            same(a, b, k);
            same(Json::get(v, k).unwrap(), Json::get(n, k).unwrap(), k);
        }
        match (Json::as_array(v), Json::as_array(n)) {
            (Some(a), Some(b)) => {
                assert_eq!(a.len(), b.len(), "{at}");
                for (a, b) in a.iter().zip(b) {
                    same(a, b, at);
                }
            }
            (a, b) => assert_eq!(a.is_none(), b.is_none(), "{at}"),
        }
    }

    #[test]
    fn a_node_reads_as_a_value_does() {
        agree(
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"m\u00e9"},
               "n":[1,-2,3e2,1e400,0.1],"b":[true,false,null],"s":"a\"b","o":{},"a":[]}"#,
        );
        // a repeated key: first place, last value
        agree(r#"{"a":1,"b":2,"a":3}"#);
        let many: Vec<String> = (0..40).map(|i| format!("\"k{}\":{i}", i % 30)).collect();
        agree(&format!("{{{}}}", many.join(",")));
        agree("[1,2]");
        agree("\"x\"");
        agree("12");
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let n = Node::parse(br#"{"a":"plain","b":"esc\n"}"#).unwrap();
        assert!(matches!(n.get("a"), Some(Node::String(Cow::Borrowed(_)))));
        assert!(matches!(n.get("b"), Some(Node::String(Cow::Owned(_)))));
    }

    #[test]
    fn bad_json_is_an_error_and_nesting_is_bounded() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "{} x", "nul"] {
            assert!(Node::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(
            Node::parse(deep.as_bytes()).is_err(),
            "serde_json's depth limit holds"
        );
    }
}
