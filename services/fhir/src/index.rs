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
//!
//! The index changes in place: [`CriteriaIndex::insert`] returns a handle that
//! [`CriteriaIndex::remove`] takes back, touching only the postings of that one criteria (a
//! freed slot is reused by the next insert), so a subscription write never rebuilds it.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use crate::criteria::{Clause, Criteria, Prefix, QueryValue};
use crate::criteria_keys::{exact_key, for_each_node_key, query_key};
use crate::json::Json;
use crate::projection::Projection;
use crate::registry::{ParamType, SearchParam};

struct Entry<T> {
    value: T,
    /// Shared with whoever parsed it (a subscription's spec): not a copy per index.
    criteria: std::sync::Arc<Criteria>,
}

/// Normalised key → entries posted under it.
type Postings = HashMap<String, Vec<(u32, bool)>>;

/// Where an entry's threshold must lie, relative to the resource's value, for the entry to
/// be selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Below,
    AtOrBelow,
    Above,
    AtOrAbove,
}

impl Side {
    /// Resource values for these sides are compared with the end of a date range.
    fn uses_range_end(self) -> bool {
        matches!(self, Side::Below | Side::AtOrBelow)
    }
}

/// Entries whose best clause is a comparison (`gt`, `ge`, `lt`, `le`) on a number, quantity
/// or date, sorted by threshold so a resource value selects its candidates by binary search.
struct Thresholds {
    param: Arc<SearchParam>,
    side: Side,
    /// Sorted by threshold; the flag says the selection alone proves a match.
    entries: Vec<(f64, u32, bool)>,
}

#[derive(Default)]
struct TypeIndex {
    thresholds: Vec<Thresholds>,
    /// The parameters some criteria are posted under, evaluated once per resource, each with
    /// its postings: normalised key → entries.
    indexed: Vec<(Arc<SearchParam>, Postings)>,
    broad: Vec<u32>,
}

/// Criteria of many subscriptions, grouped by (partition, resource type). The partition is
/// the tenant in the hub, so tenants never see each other's matches.
pub struct CriteriaIndex<T> {
    /// Slots, `None` where an entry was removed (reused by the next insert).
    entries: Vec<Option<Entry<T>>>,
    /// Removed slots, reused last-freed first.
    free: Vec<u32>,
    live: usize,
    /// Partition → resource type → its index.
    by_type: HashMap<String, HashMap<String, TypeIndex>>,
    /// Partition → the top-level elements its criteria read.
    projections: HashMap<String, Projection>,
}

/// What [`CriteriaIndex::insert`] returns: the slot an entry holds until it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(u32);

impl<T> Default for CriteriaIndex<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_type: HashMap::new(),
            projections: HashMap::new(),
        }
    }
}

/// Where an entry is posted: under the keys of its best clause, in a threshold list, or on
/// the broad list. The same criteria always give the same placement, which is how removal
/// finds an entry without storing where it went.
enum Placement<'c> {
    Keys(&'c Clause, bool),
    Threshold(&'c Clause, Side, f64, bool),
    Broad,
}

fn placement(criteria: &Criteria) -> Placement<'_> {
    let best = criteria
        .clauses
        .iter()
        .filter_map(|c| rank(c).map(|r| (r, c)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, c)| c);
    match best.map(|c| (c, threshold(c))) {
        Some((clause, Some((side, at, exact)))) => {
            Placement::Threshold(clause, side, at, exact && criteria.clauses.len() == 1)
        }
        Some((clause, None)) => Placement::Keys(
            clause,
            criteria.clauses.len() == 1 && clause.values.iter().all(exact_key),
        ),
        None => Placement::Broad,
    }
}

/// The normalised keys a clause is posted under, sorted and without repeats.
fn clause_keys(clause: &Clause) -> Vec<String> {
    let mut keys: Vec<String> = clause
        .values
        .iter()
        .filter_map(|v| query_key(clause.param.kind, v))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The threshold placement of a single-value comparison clause, and whether selection by
/// it is exactly the clause's condition (so a one-clause criteria needs no re-check).
fn threshold(clause: &Clause) -> Option<(Side, f64, bool)> {
    if clause.modifier.is_some() || clause.values.len() != 1 {
        return None;
    }
    let micros = |x: i64| x as f64;
    match &clause.values[0] {
        // Dates: the search range s against the target range t (see eval::compare_ranges).
        // gt and lt are exact; ge and le select a superset that the criteria re-check.
        QueryValue::Date { prefix, range: s } => match prefix {
            Prefix::Gt => Some((Side::Below, micros(s.hi), true)), // s.hi < t.hi
            Prefix::Ge => Some((Side::Below, micros(s.lo), false)), // s.lo < t.hi
            Prefix::Lt => Some((Side::Above, micros(s.lo), true)), // s.lo > t.lo
            Prefix::Le => Some((Side::Above, micros(s.hi), false)), // s.hi > t.lo
            _ => None,
        },
        QueryValue::Number { prefix, n } => {
            number_side(*prefix).map(|(side, exact)| (side, n.value, exact))
        }
        // Units are checked by the criteria, unless the value has none.
        QueryValue::Quantity {
            prefix,
            n,
            system,
            code,
        } => number_side(*prefix)
            .map(|(side, exact)| (side, n.value, exact && system.is_none() && code.is_none())),
        _ => None,
    }
}

fn number_side(prefix: Prefix) -> Option<(Side, bool)> {
    match prefix {
        Prefix::Gt => Some((Side::Below, true)),     // s < v
        Prefix::Ge => Some((Side::AtOrBelow, true)), // s <= v
        Prefix::Lt => Some((Side::Above, true)),     // s > v
        Prefix::Le => Some((Side::AtOrAbove, true)), // s >= v
        _ => None,
    }
}

/// The number a resource node offers for a threshold on a number or quantity (dates go
/// through their range, read once by the caller).
fn number_point<J: Json>(node: &J, kind: ParamType) -> Option<f64> {
    match kind {
        // read numbers exactly as the linear evaluator does, or the two would disagree
        ParamType::Number => crate::criteria::eval::number_of(node),
        ParamType::Quantity => node.get("value").and_then(crate::criteria::eval::number_of),
        _ => None,
    }
}

/// The point of a date range a threshold of `side` compares with: the end of the range when
/// thresholds sit below it, the start when they sit above.
fn range_point(r: &crate::datetime::Range, side: Side) -> f64 {
    let x = if side.uses_range_end() { r.hi } else { r.lo };
    match x {
        i64::MAX => f64::INFINITY,
        i64::MIN => f64::NEG_INFINITY,
        x => x as f64,
    }
}

/// The prefix and range of criteria that are one date comparison and nothing else.
fn one_date_clause(c: &Criteria) -> Option<(Prefix, &crate::datetime::Range)> {
    match c.clauses.as_slice() {
        [clause] if clause.modifier.is_none() => match clause.values.as_slice() {
            [QueryValue::Date { prefix, range }] => Some((*prefix, range)),
            _ => None,
        },
        _ => None,
    }
}

/// How selective a clause is for indexing: lower is better; `None` if it cannot be indexed.
fn rank(clause: &Clause) -> Option<u8> {
    if clause.modifier.is_some() || clause.values.is_empty() {
        return None;
    }
    if threshold(clause).is_some() {
        return Some(4);
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

impl TypeIndex {
    fn add_postings(&mut self, clause: &Clause, n: u32, exact: bool) {
        let slot = match self
            .indexed
            .iter()
            .position(|(p, _)| Arc::ptr_eq(p, &clause.param))
        {
            Some(i) => i,
            None => {
                self.indexed
                    .push((Arc::clone(&clause.param), HashMap::new()));
                self.indexed.len() - 1
            }
        };
        let postings = &mut self.indexed[slot].1;
        for mut k in clause_keys(clause) {
            k.shrink_to_fit();
            let list = postings.entry(k).or_default();
            list.push((n, exact));
            // Most keys have one subscription: keep those lists exactly sized (longer ones
            // grow as usual).
            if list.len() == 1 {
                list.shrink_to_fit();
            }
        }
    }

    fn add_threshold(&mut self, clause: &Clause, side: Side, at: f64, n: u32, exact: bool) {
        let group = match self
            .thresholds
            .iter()
            .position(|g| g.side == side && Arc::ptr_eq(&g.param, &clause.param))
        {
            Some(i) => i,
            None => {
                self.thresholds.push(Thresholds {
                    param: Arc::clone(&clause.param),
                    side,
                    entries: Vec::new(),
                });
                self.thresholds.len() - 1
            }
        };
        let list = &mut self.thresholds[group].entries;
        let pos = list.partition_point(|(t, _, _)| *t <= at);
        list.insert(pos, (at, n, exact));
    }

    /// Take entry `n` out of wherever `placement` put it.
    fn unplace(&mut self, placement: &Placement<'_>, n: u32) {
        match placement {
            Placement::Keys(clause, _) => {
                let Some(slot) = self
                    .indexed
                    .iter()
                    .position(|(p, _)| Arc::ptr_eq(p, &clause.param))
                else {
                    return;
                };
                let postings = &mut self.indexed[slot].1;
                for k in clause_keys(clause) {
                    if let Some(list) = postings.get_mut(&k) {
                        list.retain(|(i, _)| *i != n);
                        if list.is_empty() {
                            postings.remove(&k);
                        }
                    }
                }
                if postings.is_empty() {
                    self.indexed.swap_remove(slot);
                }
            }
            Placement::Threshold(clause, side, at, _) => {
                let Some(group) = self
                    .thresholds
                    .iter()
                    .position(|g| g.side == *side && Arc::ptr_eq(&g.param, &clause.param))
                else {
                    return;
                };
                let list = &mut self.thresholds[group].entries;
                // entries of one threshold sit together: look there only
                let from = list.partition_point(|(t, _, _)| *t < *at);
                let to = list.partition_point(|(t, _, _)| *t <= *at);
                match list[from..to].iter().position(|(_, i, _)| *i == n) {
                    Some(k) => {
                        list.remove(from + k);
                    }
                    // a NaN threshold sorts nowhere: search the whole list
                    None => list.retain(|(_, i, _)| *i != n),
                }
                if list.is_empty() {
                    self.thresholds.swap_remove(group);
                }
            }
            Placement::Broad => self.broad.retain(|i| *i != n),
        }
    }

    fn is_empty(&self) -> bool {
        self.indexed.is_empty() && self.thresholds.is_empty() && self.broad.is_empty()
    }
}

impl<T> CriteriaIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many criteria are in the index.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Add criteria with the value to return when they match; the handle removes them.
    pub fn insert(
        &mut self,
        partition: &str,
        criteria: impl Into<std::sync::Arc<Criteria>>,
        value: T,
    ) -> Handle {
        let criteria: std::sync::Arc<Criteria> = criteria.into();
        let n = match self.free.pop() {
            Some(n) => n,
            None => u32::try_from(self.entries.len()).unwrap_or(u32::MAX),
        };
        self.projections
            .entry(partition.to_owned())
            .or_default()
            .add(&criteria);
        let ti = self
            .by_type
            .entry(partition.to_owned())
            .or_default()
            .entry(criteria.resource_type.clone())
            .or_default();
        match placement(&criteria) {
            Placement::Threshold(clause, side, at, exact) => {
                ti.add_threshold(clause, side, at, n, exact)
            }
            Placement::Keys(clause, exact) => ti.add_postings(clause, n, exact),
            Placement::Broad => ti.broad.push(n),
        }
        let entry = Some(Entry { value, criteria });
        match self.entries.get_mut(n as usize) {
            Some(slot) => *slot = entry,
            None => self.entries.push(entry),
        }
        self.live += 1;
        Handle(n)
    }

    /// Take out what `handle` was given for, returning its value (`None` if it was removed
    /// already). Only that entry's postings change.
    pub fn remove(&mut self, partition: &str, handle: Handle) -> Option<T> {
        let n = handle.0;
        let entry = self.entries.get_mut(n as usize)?.take()?;
        if let Some(types) = self.by_type.get_mut(partition) {
            let rtype = entry.criteria.resource_type.as_str();
            if let Some(ti) = types.get_mut(rtype) {
                ti.unplace(&placement(&entry.criteria), n);
                if ti.is_empty() {
                    types.remove(rtype);
                }
            }
            if types.is_empty() {
                self.by_type.remove(partition);
            }
        }
        if let Some(p) = self.projections.get_mut(partition) {
            p.remove(&entry.criteria);
            if p.is_empty() {
                self.projections.remove(partition);
            }
        }
        self.free.push(n);
        self.live -= 1;
        Some(entry.value)
    }

    /// The top-level elements the criteria of `partition` read (`None`: it has none, so
    /// nothing there can match). [`Projection::parse`] parses a resource for
    /// [`CriteriaIndex::matches`] with them alone.
    pub fn projection(&self, partition: &str) -> Option<&Projection> {
        self.projections.get(partition)
    }

    fn type_index(&self, partition: &str, rtype: &str) -> Option<&TypeIndex> {
        self.by_type.get(partition)?.get(rtype)
    }

    fn entry(&self, i: u32) -> Option<&Entry<T>> {
        self.entries.get(i as usize).and_then(Option::as_ref)
    }

    /// [`CriteriaIndex::matches`] on a resource given as JSON text (of type `rtype`): parsed
    /// only when some criteria of `partition` are on that type, and then only the elements
    /// its criteria read ([`Projection::parse`]). Same values as matching the whole tree.
    pub fn matches_text(
        &self,
        partition: &str,
        rtype: &str,
        json: &[u8],
        now_micros: i64,
    ) -> serde_json::Result<Vec<&T>> {
        let (Some(_), Some(projection)) = (
            self.type_index(partition, rtype),
            self.projections.get(partition),
        ) else {
            return Ok(Vec::new());
        };
        let node = projection.parse(json)?;
        Ok(self.matches(partition, &node, now_micros))
    }

    /// Values of every criteria in `partition` that `resource` matches, in slot order (insertion
    /// order until something is removed).
    pub fn matches<J: Json>(&self, partition: &str, resource: &J, now_micros: i64) -> Vec<&T> {
        let Some(rtype) = resource.get("resourceType").and_then(J::as_str) else {
            return Vec::new();
        };
        let Some(ti) = self.type_index(partition, rtype) else {
            return Vec::new();
        };
        // Entries selected by an exact condition are matches already; the others are
        // candidates whose criteria are evaluated.
        let mut candidates: Vec<u32> = ti.broad.clone();
        let mut confirmed: Vec<u32> = Vec::new();
        let mut take = |i: u32, exact: bool| {
            if exact {
                confirmed.push(i)
            } else {
                candidates.push(i)
            }
        };
        let mut scratch = String::new();
        for (param, postings) in &ti.indexed {
            let Ok(paths) = &param.paths else { continue };
            for node in paths.iter().flat_map(|p| p.eval(resource)) {
                for_each_node_key(param.kind, node, &mut scratch, |k| {
                    if let Some(list) = postings.get(k) {
                        for &(i, exact) in list {
                            take(i, exact);
                        }
                    }
                });
            }
        }
        for g in &ti.thresholds {
            let Ok(paths) = &g.param.paths else { continue };
            for node in paths.iter().flat_map(|p| p.eval(resource)) {
                // a date node's range, read once for the binary search and the re-checks
                let range = match g.param.kind {
                    ParamType::Date => crate::criteria::date_range(node),
                    _ => None,
                };
                let point = match &range {
                    Some(r) => Some(range_point(r, g.side)),
                    None => number_point(node, g.param.kind),
                };
                let Some(x) = point else {
                    continue;
                };
                let list = &g.entries;
                let slice = match g.side {
                    Side::Below => &list[..list.partition_point(|(t, _, _)| *t < x)],
                    Side::AtOrBelow => &list[..list.partition_point(|(t, _, _)| *t <= x)],
                    Side::Above => &list[list.partition_point(|(t, _, _)| *t <= x)..],
                    Side::AtOrAbove => &list[list.partition_point(|(t, _, _)| *t < x)..],
                };
                for &(_, i, exact) in slice {
                    // Criteria of one date comparison (`date=ge…`) are decided on this
                    // node's range: the clause matches when any node's range satisfies it,
                    // and every node comes through here.
                    let one_date = match (&range, exact) {
                        (Some(r), false) => self
                            .entry(i)
                            .and_then(|e| one_date_clause(&e.criteria))
                            .map(|(p, s)| (p, s, r)),
                        _ => None,
                    };
                    match one_date {
                        Some((prefix, s, r)) => {
                            if crate::criteria::compare_ranges(prefix, s, r, now_micros) {
                                take(i, true);
                            }
                        }
                        None => take(i, exact),
                    }
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.retain(|&i| {
            self.entry(i)
                .is_some_and(|e| e.criteria.matches_at(resource, now_micros))
        });
        candidates.extend(confirmed);
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|i| self.entry(i))
            .map(|e| &e.value)
            .collect()
    }

    /// Values of every criteria in `partition` that `resource` matches, by scanning all of
    /// them: the reference the index is tested (and benchmarked) against.
    pub fn matches_linear<J: Json>(
        &self,
        partition: &str,
        resource: &J,
        now_micros: i64,
    ) -> Vec<&T> {
        let Some(rtype) = resource.get("resourceType").and_then(J::as_str) else {
            return Vec::new();
        };
        if self.type_index(partition, rtype).is_none() {
            return Vec::new();
        }
        let mut members: Vec<u32> = Vec::new();
        if let Some(ti) = self.type_index(partition, rtype) {
            members.extend(&ti.broad);
            members.extend(
                ti.indexed
                    .iter()
                    .flat_map(|(_, p)| p.values().flatten().map(|(i, _)| *i)),
            );
            members.extend(
                ti.thresholds
                    .iter()
                    .flat_map(|g| g.entries.iter().map(|(_, i, _)| *i)),
            );
        }
        members.sort_unstable();
        members.dedup();
        members
            .into_iter()
            .filter_map(|i| self.entry(i))
            .filter(|e| e.criteria.matches_at(resource, now_micros))
            .map(|e| &e.value)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
        match r.next() % 14 {
            9 => format!(
                "date={}2024-0{}",
                r.pick(&["gt", "ge", "lt", "le", "eq", "sa"]),
                1 + r.next() % 6
            ),
            10 => format!("value-quantity=lt{}", r.next() % 10),
            11 => format!(
                "value-quantity=ge{}|http://unitsofmeasure.org|{}",
                r.next() % 10,
                r.pick(&["mg", "g"])
            ),
            12 => format!("date=le2024-03-{:02}T10:00:00Z", 1 + r.next() % 28),
            13 => format!("value-quantity=le{}.5", r.next() % 10),
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
            "valueQuantity": {"value": r.next() % 12, "system": "http://unitsofmeasure.org", "code": r.pick(&["mg", "g"])},
            "effectiveDateTime": format!("2024-0{}-{:02}", 1 + r.next() % 6, 1 + r.next() % 28)})
    }

    /// `f` of `res` as the projection of partition `t` parses it.
    fn with_projected<T, R>(
        index: &CriteriaIndex<T>,
        res: &Value,
        f: impl FnOnce(&crate::json::Node<'_>) -> R,
    ) -> R {
        let text = res.to_string();
        f(&index
            .projection("t")
            .unwrap()
            .parse(text.as_bytes())
            .unwrap())
    }

    #[test]
    fn indexed_matching_equals_a_linear_scan() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut index = CriteriaIndex::new();
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
        for i in 0..3000 {
            let mut res = resource(&mut r, i);
            match i % 5 {
                0 => {
                    let obj = res.as_object_mut().unwrap();
                    obj.remove("effectiveDateTime");
                    obj.insert(
                        "effectivePeriod".into(),
                        json!({"start": "2024-02-10", "end": "2024-04-01T12:00:00Z"}),
                    );
                }
                1 => {
                    res.as_object_mut().unwrap().remove("valueQuantity");
                }
                2 => res["effectiveDateTime"] = json!("2024"),
                _ => {}
            }
            if i % 3 == 0 {
                // elements no criteria read, for the projection to step over
                let obj = res.as_object_mut().unwrap();
                obj.insert(
                    "meta".into(),
                    json!({"tag": [{"code": "x"}], "versionId": "2"}),
                );
                obj.insert("encounter".into(), json!({"reference": "Encounter/e"}));
                obj.insert(
                    "component".into(),
                    json!([{"valueQuantity": {"value": 99}}]),
                );
            }
            let fast = index.matches("t", &res, 0);
            let slow = index.matches_linear("t", &res, 0);
            assert_eq!(fast, slow, "{res}");
            with_projected(&index, &res, |projected| {
                assert_eq!(index.matches("t", projected, 0), fast, "{res}");
                assert_eq!(index.matches_linear("t", projected, 0), fast, "{res}");
            });
            let text = res.to_string();
            let by_text = index.matches_text("t", "Observation", text.as_bytes(), 0);
            assert_eq!(by_text.ok(), Some(fast.clone()), "{res}");
            let untyped = index.matches_text("t", "Medication", text.as_bytes(), 0);
            assert_eq!(
                untyped.ok(),
                Some(Vec::new()),
                "no criteria on the type: no parse"
            );
            total += fast.len();
        }
        assert!(
            total > 1000,
            "the generator should produce plenty of matches, got {total}"
        );
    }

    #[test]
    fn removing_and_reinserting_in_place_equals_a_fresh_index() {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        let mut index = CriteriaIndex::new();
        let mut live: Vec<(Handle, String, u32)> = Vec::new();
        for n in 0..600u32 {
            // every third step takes a random live entry out, as a subscription delete or
            // the first half of an update does
            if n % 3 == 2 && !live.is_empty() {
                let k = (r.next() % live.len() as u64) as usize;
                let (h, _, v) = live.swap_remove(k);
                assert_eq!(index.remove("t", h), Some(v));
                assert_eq!(index.remove("t", h), None, "a handle removes once");
                continue;
            }
            let clauses: Vec<String> = (0..1 + r.next() % 3).map(|_| clause(&mut r)).collect();
            let c = format!("Observation?{}", clauses.join("&"));
            let h = index.insert("t", Criteria::parse(&c).unwrap(), n);
            live.push((h, c, n));
        }
        assert_eq!(index.len(), live.len());
        let mut fresh = CriteriaIndex::new();
        for (_, c, v) in &live {
            fresh.insert("t", Criteria::parse(c).unwrap(), *v);
        }
        let mut total = 0;
        for i in 0..2000 {
            let res = resource(&mut r, i);
            let sorted = |v: Vec<&u32>| {
                let mut v: Vec<u32> = v.into_iter().copied().collect();
                v.sort_unstable();
                v
            };
            let got = sorted(index.matches("t", &res, 0));
            assert_eq!(got, sorted(fresh.matches("t", &res, 0)), "{res}");
            // the projection kept up with the changes
            let by_projection = with_projected(&index, &res, |p| sorted(index.matches("t", p, 0)));
            assert_eq!(got, by_projection, "{res}");
            assert_eq!(got, sorted(index.matches_linear("t", &res, 0)), "{res}");
            total += got.len();
        }
        assert!(
            total > 500,
            "the generator should produce plenty of matches, got {total}"
        );
        // emptied completely, nothing is left to match
        for (h, _, _) in live {
            index.remove("t", h);
        }
        assert!(index.is_empty() && index.by_type.is_empty() && index.projections.is_empty());
    }

    /// Generated input: resources with bytes changed, dropped and repeated. Whatever the
    /// bytes, the whole parse and the projected one accept the same inputs as serde_json,
    /// never panic, and the matches they give are those of the `Value`.
    #[test]
    fn mangled_resources_parse_and_match_alike() {
        let mut r = Rng(0x51_7cc1_b727_220a);
        let mut index = CriteriaIndex::new();
        for n in 0..200 {
            let clauses: Vec<String> = (0..1 + r.next() % 3).map(|_| clause(&mut r)).collect();
            index.insert(
                "t",
                Criteria::parse(&format!("Observation?{}", clauses.join("&"))).unwrap(),
                n,
            );
        }
        let projection = index.projection("t").unwrap();
        let (mut parsed, mut matched) = (0, 0);
        for i in 0..4000 {
            let mut bytes = resource(&mut r, i).to_string().into_bytes();
            for _ in 0..1 + r.next() % 3 {
                let at = (r.next() % bytes.len() as u64) as usize;
                match r.next() % 4 {
                    0 => {
                        let picks = br#"{}[]":,0-e.\u"#;
                        bytes[at] = picks[(r.next() % picks.len() as u64) as usize];
                    }
                    1 => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at, bytes[at]),
                    _ => bytes[at] = (r.next() % 256) as u8,
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let value = serde_json::from_slice::<Value>(&bytes);
            let node = crate::json::Node::parse(&bytes);
            assert_eq!(
                value.is_ok(),
                node.is_ok(),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            let projected = projection.parse(&bytes);
            if let Ok(v) = value {
                parsed += 1;
                let expected = index.matches("t", &v, 0);
                if let Ok(n) = node {
                    assert_eq!(index.matches("t", &n, 0), expected);
                }
                if v.is_object() {
                    let p = projected.unwrap_or_else(|e| panic!("{e}: {v}"));
                    assert_eq!(index.matches("t", &p, 0), expected, "{v}");
                }
                matched += expected.len();
            }
        }
        assert!(
            parsed > 500 && matched > 100,
            "the mangling leaves enough to compare: {parsed} parsed, {matched} matches"
        );
    }

    #[test]
    fn partitions_are_separate() {
        let mut index = CriteriaIndex::new();
        index.insert("a", Criteria::parse("Observation?code=1").unwrap(), "a");
        index.insert("b", Criteria::parse("Observation?code=1").unwrap(), "b");
        let res = json!({"resourceType": "Observation", "code": {"coding": [{"code": "1"}]}});
        assert_eq!(index.matches("a", &res, 0), vec![&"a"]);
        assert!(index.matches("c", &res, 0).is_empty());
    }
}
