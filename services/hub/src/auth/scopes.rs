//! SMART on FHIR scopes (v2 `system/Observation.rs`, with the v1 forms `read`, `write`, `*`
//! read as v2), and the hub's own: `hub/operator` (the operator of the whole hub: every
//! tenant's keys, quarantine and audit, publishing into any tenant, `/metrics`), `hub/admin`
//! (the administrator of the credential's own tenant: its keys, quarantine and audit),
//! `hub/publish` (publish change events into the caller's tenant) and `hub/metrics` (read
//! `/metrics`, which spans every tenant).
//!
//! Scopes decide two things: which interactions a caller may use on `Subscription` and
//! `SubscriptionTopic`, and which resource types (and, for `patient/` scopes, which patient's
//! resources) a subscription it owns may receive.

/// One interaction a scope permits: SMART v2's c, r, u, d, s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    /// The SMART v2 letter (`c`, `r`, `u`, `d`, `s`).
    pub fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }
}

/// Whose data a scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// `system/`: every resource of the type in the caller's tenant.
    System,
    /// `patient/`: one patient's compartment, from the credential's patient context. A
    /// `user/` scope reads as this too: SMART v2 gives it "what the user may see", and the
    /// one user context this hub knows is the credential's `patient` claim, so a `user/`
    /// scope never reaches further than that patient (and without the claim, nothing).
    Patient,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    context: Context,
    /// `None`: `*`.
    resource: Option<String>,
    /// The v2 letters granted, in `cruds` order.
    perms: String,
}

/// What a caller may reach for one resource type and interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every resource of the type in the caller's tenant.
    All,
    /// Resources in the caller's patient's compartment only.
    Patient,
    None,
}

/// A caller's parsed scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    list: Vec<Scope>,
    admin: bool,
    operator: bool,
    publish: bool,
    metrics: bool,
}

pub const OPERATOR: &str = "hub/operator";
pub const ADMIN: &str = "hub/admin";
pub const PUBLISH: &str = "hub/publish";
pub const METRICS: &str = "hub/metrics";

/// `cruds` letters of a v2 permission string, or of a v1 `read` / `write` / `*`.
fn perms_of(s: &str) -> Option<String> {
    match s {
        "read" => return Some("rs".into()),
        "write" => return Some("cud".into()),
        "*" => return Some("cruds".into()),
        _ => {}
    }
    // v2: letters in order, each at most once
    let order = "cruds";
    let mut last = None;
    for c in s.chars() {
        let pos = order.find(c)?;
        if last.is_some_and(|l| pos <= l) {
            return None;
        }
        last = Some(pos);
    }
    (!s.is_empty()).then(|| s.to_owned())
}

fn parse_one(s: &str) -> Option<Scope> {
    // SMART v2 allows `?param=value` restrictions; the hub does not honour them, so a scope
    // carrying one grants nothing rather than more than it says
    if s.contains('?') {
        return None;
    }
    let (context, rest) = s.split_once('/')?;
    let context = match context {
        "system" => Context::System,
        "patient" | "user" => Context::Patient,
        _ => return None,
    };
    let (resource, perms) = rest.rsplit_once('.')?;
    let resource = match resource {
        "*" => None,
        r if !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()) => Some(r.to_owned()),
        _ => return None,
    };
    Some(Scope {
        context,
        resource,
        perms: perms_of(perms)?,
    })
}

impl Scopes {
    /// Parse space-separated or listed scopes; ones the hub does not know grant nothing.
    pub fn parse<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Scopes {
        let mut out = Scopes::default();
        for s in scopes.into_iter().flat_map(str::split_whitespace) {
            match s {
                ADMIN => out.admin = true,
                OPERATOR => out.operator = true,
                PUBLISH => out.publish = true,
                METRICS => out.metrics = true,
                _ => out.list.extend(parse_one(s)),
            }
        }
        out
    }

    /// Everything (open mode).
    pub fn all() -> Scopes {
        Scopes::parse(["hub/operator system/*.cruds"])
    }

    /// Administers the credential's own tenant (`hub/admin`; the operator administers all).
    pub fn is_admin(&self) -> bool {
        self.admin || self.operator
    }

    /// Operates the whole hub, every tenant (`hub/operator`).
    pub fn is_operator(&self) -> bool {
        self.operator
    }

    /// Scopes that reach beyond one tenant: only an operator may grant them.
    pub fn spans_tenants(&self) -> bool {
        self.operator || self.metrics
    }

    /// May publish change events into the caller's tenant.
    pub fn may_publish(&self) -> bool {
        self.publish || self.is_admin()
    }

    /// May read `/metrics` (hub-wide: `hub/metrics` or `hub/operator`, not a tenant admin).
    pub fn may_read_metrics(&self) -> bool {
        self.metrics || self.operator
    }

    /// What `perm` on `resource_type` reaches.
    pub fn access(&self, resource_type: &str, perm: Perm) -> Access {
        let mut best = Access::None;
        for s in &self.list {
            let type_ok = s.resource.as_deref().is_none_or(|r| r == resource_type);
            if !type_ok || !s.perms.contains(perm.letter()) {
                continue;
            }
            match s.context {
                Context::System => return Access::All,
                Context::Patient => best = Access::Patient,
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let s = Scopes::parse(["system/Subscription.cruds system/Observation.rs"]);
        assert_eq!(s.access("Subscription", Perm::Delete), Access::All);
        assert_eq!(s.access("Observation", Perm::Read), Access::All);
        assert_eq!(s.access("Observation", Perm::Create), Access::None);
        assert_eq!(s.access("Patient", Perm::Read), Access::None);
        let v1 = Scopes::parse(["system/*.read"]);
        assert_eq!(v1.access("Encounter", Perm::Search), Access::All);
        assert_eq!(v1.access("Encounter", Perm::Update), Access::None);
        let p = Scopes::parse(["patient/Observation.rs", "system/Subscription.c"]);
        assert_eq!(p.access("Observation", Perm::Read), Access::Patient);
        assert!(!p.is_admin() && !p.may_publish());
        assert!(Scopes::parse(["hub/publish"]).may_publish());
        assert!(Scopes::all().is_admin() && Scopes::all().is_operator());
        let admin = Scopes::parse(["hub/admin"]);
        assert!(admin.is_admin() && !admin.is_operator() && !admin.may_read_metrics());
        assert!(!admin.spans_tenants() && Scopes::parse(["hub/metrics"]).spans_tenants());
    }

    #[test]
    fn user_scopes_reach_no_further_than_the_patient_context() {
        let u = Scopes::parse(["user/Observation.rs user/Subscription.cruds"]);
        assert_eq!(u.access("Observation", Perm::Read), Access::Patient);
        // the hub's own resources have no patient compartment: a user/ scope cannot manage them
        assert_eq!(u.access("Subscription", Perm::Read), Access::Patient);
        assert_eq!(
            Scopes::parse(["user/*.rs system/Observation.rs"]).access("Observation", Perm::Read),
            Access::All,
            "a system/ scope beside it still reaches everything"
        );
    }

    #[test]
    fn malformed_or_restricted_scopes_grant_nothing() {
        for bad in [
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.x",
            "system/.rs",
            "openid",
            "system/Observation.rs?category=laboratory",
            "admin/*.*",
            "system/Obs-ervation.rs",
        ] {
            assert_eq!(Scopes::parse([bad]), Scopes::default(), "{bad}");
        }
    }
}
