//! Index keys: what a query value asks for and what a resource node offers, in one
//! normalised form per parameter type, so that equal keys mean "may match".

use crate::criteria::QueryValue;
use crate::json::Json;
use crate::registry::ParamType;

/// The key a query value is posted under, if it is an equality the index can serve.
pub(crate) fn query_key(kind: ParamType, v: &QueryValue) -> Option<String> {
    match (kind, v) {
        (
            ParamType::Token,
            QueryValue::Token {
                system: None,
                code: Some(c),
            },
        ) => Some(format!("c|{c}")),
        // `|code` (no system) is posted under the plain code; the criteria check the rest.
        (
            ParamType::Token,
            QueryValue::Token {
                system: Some(s),
                code: Some(c),
            },
        ) if s.is_empty() => Some(format!("c|{c}")),
        (
            ParamType::Token,
            QueryValue::Token {
                system: Some(s),
                code: Some(c),
            },
        ) => Some(format!("s|{s}|{c}")),
        (
            ParamType::Reference,
            QueryValue::Reference {
                rtype: Some(t),
                id,
                absolute: None,
            },
        ) => Some(format!("r|{t}/{id}")),
        (
            ParamType::Reference,
            QueryValue::Reference {
                rtype: None,
                id,
                absolute: None,
            },
        ) => Some(format!("i|{id}")),
        _ => None,
    }
}

/// Whether a node offering the key of `v` is exactly a match for `v` (no re-check needed).
pub(crate) fn exact_key(v: &QueryValue) -> bool {
    match v {
        QueryValue::Token {
            system: Some(s),
            code: Some(_),
        } => !s.is_empty(),
        QueryValue::Token {
            system: None,
            code: Some(_),
        } => true,
        QueryValue::Reference { absolute: None, .. } => true,
        _ => false,
    }
}

/// Call `f` with every key a resource node offers for a parameter of type `kind`, built in
/// `scratch` so that probing allocates nothing per key.
pub(crate) fn for_each_node_key<J: Json>(
    kind: ParamType,
    node: &J,
    scratch: &mut String,
    mut f: impl FnMut(&str),
) {
    match kind {
        ParamType::Token => {
            crate::criteria::any_token_pair(node, &mut |sys, code| {
                scratch.clear();
                scratch.push_str("c|");
                scratch.push_str(code);
                f(scratch);
                if let Some(s) = sys {
                    scratch.clear();
                    scratch.push_str("s|");
                    scratch.push_str(s);
                    scratch.push('|');
                    scratch.push_str(code);
                    f(scratch);
                }
                false
            });
        }
        ParamType::Reference => {
            if let Some((t, id)) = crate::criteria::reference_target(node) {
                if let Some(t) = t {
                    scratch.clear();
                    scratch.push_str("r|");
                    scratch.push_str(t);
                    scratch.push('/');
                    scratch.push_str(id);
                    f(scratch);
                }
                scratch.clear();
                scratch.push_str("i|");
                scratch.push_str(id);
                f(scratch);
            }
        }
        _ => {}
    }
}
