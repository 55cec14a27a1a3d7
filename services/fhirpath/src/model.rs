//! The FHIR R4 type model: which elements a type has, their types and cardinality.
//!
//! Generated from the FHIR 4.0.1 StructureDefinitions by `scripts/gen-fhir-model.py` into
//! `schemas/fhir/r4/model.tsv` and compiled in. The evaluator uses it for choice types
//! (`Observation.value` reads `valueQuantity`, `valueString`, ...), for the FHIR type of every
//! node (`is`/`as`/`ofType`, `type()`, primitive conversions) and to refuse paths that cannot
//! exist (`name.given1`).

use std::sync::OnceLock;

use rustc_hash::FxHashMap as HashMap;

const R4_MODEL: &str = include_str!("../../../schemas/fhir/r4/model.tsv");

/// What kind of type a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primitive,
    Complex,
    Resource,
    /// A backbone element, named by its path (`Patient.contact`).
    Backbone,
}

/// One element of a type.
#[derive(Debug)]
pub struct ElementDef {
    /// The name without `[x]`.
    pub name: &'static str,
    pub types: Vec<&'static str>,
    pub many: bool,
    pub choice: bool,
    /// The JSON keys this element is read from: one, or one per type of a choice element
    /// (`valueQuantity`, ...), with the `_key` sibling of primitives.
    pub keys: Vec<ElementKey>,
}

/// One JSON key of an element.
#[derive(Debug)]
pub struct ElementKey {
    pub json: String,
    /// `_json`, for primitive types (their id and extensions).
    pub ext: Option<String>,
    pub ty: &'static str,
}

/// What the model says about `type.element`.
pub enum Lookup<'m> {
    UnknownType,
    NoElement,
    Found(&'m ElementDef),
}

/// One type and its own elements (inherited ones are found through `base`).
#[derive(Debug)]
pub struct TypeDef {
    pub name: &'static str,
    pub base: Option<&'static str>,
    pub kind: Kind,
    pub elements: Vec<std::sync::Arc<ElementDef>>,
}

/// The type model of one FHIR version.
#[derive(Debug)]
pub struct Model {
    types: HashMap<&'static str, TypeDef>,
    /// Every type's elements, inherited ones included, by name: one hash probe per step.
    flat: HashMap<&'static str, HashMap<&'static str, std::sync::Arc<ElementDef>>>,
}

impl Model {
    /// The FHIR 4.0.1 model (parsed once).
    pub fn r4() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::parse(R4_MODEL))
    }

    fn parse(text: &'static str) -> Model {
        let mut types: HashMap<&'static str, TypeDef> = HashMap::default();
        let mut current: Option<&'static str> = None;
        for line in text.lines() {
            let mut cols = line.split('\t');
            match (cols.next(), cols.next(), cols.next(), cols.next()) {
                (Some("T"), Some(name), Some(base), Some(kind)) => {
                    let kind = match kind {
                        "primitive-type" => Kind::Primitive,
                        "resource" => Kind::Resource,
                        "backbone" => Kind::Backbone,
                        _ => Kind::Complex,
                    };
                    let base = (base != "-").then_some(base);
                    types.insert(
                        name,
                        TypeDef {
                            name,
                            base,
                            kind,
                            elements: Vec::new(),
                        },
                    );
                    current = Some(name);
                }
                (Some("E"), Some(name), Some(max), Some(tys)) => {
                    let Some(t) = current.and_then(|c| types.get_mut(c)) else {
                        continue;
                    };
                    let choice = name.ends_with("[x]");
                    t.elements.push(std::sync::Arc::new(ElementDef {
                        name: name.trim_end_matches("[x]"),
                        types: tys.split(',').collect(),
                        many: max == "*",
                        choice,
                        keys: Vec::new(),
                    }));
                }
                _ => {}
            }
        }
        let primitive: Vec<&'static str> = types
            .values()
            .filter(|t| t.kind == Kind::Primitive)
            .map(|t| t.name)
            .collect();
        for t in types.values_mut() {
            for e in &mut t.elements {
                let Some(e) = std::sync::Arc::get_mut(e) else {
                    continue;
                };
                e.keys = e
                    .types
                    .iter()
                    .map(|ty| {
                        let json = if e.choice {
                            choice_key(e.name, ty)
                        } else {
                            e.name.to_string()
                        };
                        ElementKey {
                            ext: primitive.contains(ty).then(|| format!("_{json}")),
                            json,
                            ty,
                        }
                    })
                    .take(if e.choice { usize::MAX } else { 1 })
                    .collect();
            }
        }
        let mut flat: HashMap<&'static str, HashMap<&'static str, std::sync::Arc<ElementDef>>> =
            HashMap::default();
        for name in types.keys() {
            let mut all: HashMap<&'static str, std::sync::Arc<ElementDef>> = HashMap::default();
            let mut t = types.get(name);
            while let Some(def) = t {
                for e in &def.elements {
                    all.entry(e.name)
                        .or_insert_with(|| std::sync::Arc::clone(e));
                }
                t = def.base.and_then(|b| types.get(b));
            }
            flat.insert(name, all);
        }
        Model { types, flat }
    }

    /// The element `name` of `ty`, distinguishing an unknown type from an unknown element.
    pub fn lookup(&self, ty: &str, name: &str) -> Lookup<'_> {
        match self.flat.get(ty) {
            None => Lookup::UnknownType,
            Some(all) => match all.get(name) {
                Some(e) => Lookup::Found(e),
                None => Lookup::NoElement,
            },
        }
    }

    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    /// The model's own copy of a type name (so values can hold `&'static str`).
    pub fn intern(&self, name: &str) -> Option<&'static str> {
        self.types.get(name).map(|t| t.name)
    }

    /// The element `name` of `ty`, looked up through the base types.
    pub fn element(&self, ty: &str, name: &str) -> Option<&ElementDef> {
        self.flat.get(ty)?.get(name).map(|e| &**e)
    }

    /// Whether `ty` is `of` or derives from it.
    pub fn is_a(&self, ty: &str, of: &str) -> bool {
        let mut cur = ty;
        loop {
            if cur == of {
                return true;
            }
            match self.types.get(cur).and_then(|t| t.base) {
                Some(b) => cur = b,
                None => return false,
            }
        }
    }

    pub fn is_resource(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == Kind::Resource)
    }

    pub fn is_primitive(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == Kind::Primitive)
    }

    /// Iterates over all elements of a type, its own first, then inherited ones.
    pub fn all_elements(&self, ty: &str) -> Vec<&ElementDef> {
        let mut out = Vec::new();
        let mut t = self.types.get(ty);
        while let Some(def) = t {
            out.extend(def.elements.iter().map(|e| &**e));
            t = def.base.and_then(|b| self.types.get(b));
        }
        out
    }
}

/// The JSON key suffix of a choice element's type: `valueQuantity`, `valueDateTime`.
pub fn choice_key(name: &str, ty: &str) -> String {
    let mut s = String::with_capacity(name.len() + ty.len());
    s.push_str(name);
    let mut chars = ty.chars();
    if let Some(c) = chars.next() {
        s.extend(c.to_uppercase());
        s.push_str(chars.as_str());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r4_model_knows_choices_backbones_and_inheritance() {
        let m = Model::r4();
        let v = m.element("Observation", "value").unwrap();
        assert!(v.choice);
        assert!(v.types.contains(&"Quantity"));
        assert_eq!(
            m.element("Patient", "contact").unwrap().types,
            ["Patient.contact"]
        );
        assert!(m.element("Patient", "id").is_some());
        assert!(m.element("Patient", "extension").is_some());
        assert!(m.element("Patient.contact", "modifierExtension").is_some());
        assert!(m.element("HumanName", "given1").is_none());
        assert!(m.is_a("Age", "Quantity"));
        assert!(m.is_a("Patient", "Resource"));
        assert!(m.is_resource("Observation"));
        assert!(m.is_primitive("code"));
        assert_eq!(choice_key("value", "dateTime"), "valueDateTime");
        assert_eq!(
            m.element("Questionnaire.item", "item").unwrap().types,
            ["Questionnaire.item"]
        );
    }
}
