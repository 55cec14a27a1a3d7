//! Configuration: the embedded `config.default.toml`, then a config file, then `HUB_*`
//! environment variables, then command-line overrides; then [`Config::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// The defaults, documented line by line.
pub const DEFAULT_TOML: &str = include_str!("../../../config.default.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub matcher: MatcherConfig,
    pub delivery: DeliveryConfig,
    pub tenancy: TenancyConfig,
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub streams: StreamsConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub secrets: SecretsConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub cors: CorsConfig,
}

/// Which web pages may read the browser endpoints (`$stream`, `$get-ws-binding-token`)
/// across origins (`api::cors`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://dashboard.example.org`, scheme, host and port only) whose pages may
    /// read them; `["*"]` any page; empty (the default) none.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// TLS on the HTTP and gRPC listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty: plain TCP.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
    /// PEM CAs whose client certificates are verified (optional client authentication).
    pub client_ca_file: PathBuf,
}

/// Keys that seal secrets at rest (`auth::sealed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// The key id new secrets are sealed with; empty: the local key file on SQLite, none on
    /// PostgreSQL.
    pub active: String,
    /// Key id → 32 bytes in base64.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Key id → a file holding the 32 bytes in base64 (a mounted Docker or Kubernetes
    /// secret), read at start.
    #[serde(default)]
    pub key_files: BTreeMap<String, PathBuf>,
}

/// `open`: no credential needed (a laptop; loopback addresses only). `required`: every
/// request authenticates (production).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Open,
    Required,
}

/// Authentication and limits per credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Requests per second per credential (0: no limit), and the burst allowed above it.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// Most subscriptions one credential may own (0: no limit).
    pub max_subscriptions_per_credential: usize,
    /// Most open websocket, SSE and gRPC streams per credential (0: no limit).
    pub max_streams_per_credential: usize,
    /// Seconds between two checks of an open stream's credential (revoked, expired, scopes
    /// reduced: the stream ends with a stated reason). Also checked at every batch.
    pub stream_recheck_secs: u64,
    /// Least seconds between two JWKS fetches of one issuer for unknown `kid`s.
    pub jwks_min_refresh_secs: u64,
    /// Seconds a binding token (`$get-ws-binding-token`) stays valid; renewing it with
    /// itself before then gives a fresh one.
    #[serde(default = "default_binding_token_ttl")]
    pub binding_token_ttl_secs: u64,
    /// Refused credentials per minute per network peer before its further refusals are
    /// answered 429 (0: no limit).
    pub refusals_per_minute_per_peer: u32,
    /// Token issuers the hub trusts (SMART Backend Services).
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Client certificates (lower-case hex SHA-256 of the DER) that act as an API key (its
    /// id), when `tls.client_ca_file` verifies them.
    #[serde(default)]
    pub client_certificates: BTreeMap<String, String>,
}

/// One trusted token issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Where its public keys are (a JWKS document).
    pub jwks_url: String,
    /// The `aud` its tokens must carry for this hub.
    pub audience: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim naming the tenant; absent in a token: `tenant` below, then the default tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    #[serde(default)]
    pub tenant: String,
    /// The tenants this issuer's tokens may name; empty: only `tenant` (the default tenant
    /// when that is empty too). A token naming any other tenant is refused.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Whether this issuer's tokens may carry the scopes that span every tenant
    /// (`hub/operator`, `hub/metrics`); without it they are dropped from its tokens.
    #[serde(default)]
    pub operator: bool,
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

/// The socket addresses of `value` (`key`'s value): `IP:port`, `[IPv6]:port`, or `host:port`
/// with the host name resolved.
fn resolve(key: &str, value: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let usage = "expected host:port, like 127.0.0.1:8080, [::1]:8080 or localhost:8080";
    let Some((host, port)) = value.rsplit_once(':') else {
        anyhow::bail!("{key} '{value}': {usage}");
    };
    let Ok(port) = port.parse::<u16>() else {
        anyhow::bail!("{key} '{value}': the port must be a number from 0 to 65535 ({usage})");
    };
    if host.is_empty() || host.contains(':') {
        anyhow::bail!("{key} '{value}': {usage}");
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| {
            anyhow::anyhow!("{key} '{value}': the host name '{host}' does not resolve: {e}")
        })?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("{key} '{value}': the host name '{host}' resolves to no address");
    }
    Ok(addrs)
}

/// Create `path` with mode 0600 (and its directory), or narrow an existing file to 0600.
#[cfg(unix)]
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for p in [
                path.to_path_buf(),
                PathBuf::from(format!("{}-wal", path.display())),
                PathBuf::from(format!("{}-shm", path.display())),
            ] {
                if p.exists() {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn private_file(_: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

fn default_algorithms() -> Vec<String> {
    ["RS384", "ES384", "RS256", "ES256"]
        .map(str::to_owned)
        .to_vec()
}

fn default_tenant_claim() -> String {
    "tenant".into()
}

fn default_scope_claim() -> String {
    "scope".into()
}

fn default_leeway() -> u64 {
    60
}

/// The audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Days audit rows are kept (0: forever).
    pub retention_days: u32,
    /// No audit row, no disclosure (503, the stream ends, the rest-hook worker stops).
    pub fail_closed: bool,
    /// Seconds per aggregated audit row of refused credentials (one per peer and window).
    pub refusal_window_secs: u64,
}

/// Stream channels (websocket, SSE, gRPC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// The most notification bytes one connection holds in the hub at a time.
    pub max_buffer_bytes: usize,
    /// Seconds a stream's client may leave a written message untaken (a websocket send, an
    /// SSE or gRPC frame the connection cannot pass on) before the hub closes it.
    pub write_timeout_secs: u64,
    /// Events a live reader may fall behind its subscription's head before the hub ends its
    /// stream with a reason (0: no limit). A reader replaying from an older position is held
    /// to it only once it has caught up.
    pub max_lag_events: i64,
}

/// The gRPC notification stream (`proto/fhirhub/v1/stream.proto`), served by the api role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address of the gRPC listener; empty turns it off. Port 0 picks a free port (printed).
    pub listen: String,
}

/// The admin listener: `/health`, `/ready` (of this process) and `/metrics` (of this
/// process) for probes and scrapers, in every role.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Its address. Empty: a process with the api role answers these on the API listener
    /// and binds no other; a process without it binds `127.0.0.1:0` (a free port, printed at
    /// start) so that it is never invisible — give it a fixed address for probes.
    #[serde(default)]
    pub listen: String,
}

impl Config {
    /// Where this process's admin listener binds, if it has one.
    pub fn admin_listen(&self) -> Option<&str> {
        match self.admin.listen.as_str() {
            "" if self.has_role(Role::Api) => None,
            "" => Some("127.0.0.1:0"),
            addr => Some(addr),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Api,
    Matcher,
    Delivery,
}

/// `server.roles`: `["api", "matcher"]`, or `"api,matcher"`.
fn roles<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
    struct Roles;
    impl<'de> serde::de::Visitor<'de> for Roles {
        type Value = Vec<Role>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of roles (api, matcher, delivery) or one comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<Role>, E> {
            text.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(|r| Role::deserialize(serde::de::value::StrDeserializer::<E>::new(r)))
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Role>, A::Error> {
            let mut out = Vec::new();
            while let Some(r) = seq.next_element()? {
                out.push(r);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Roles)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// The FHIR base URL clients use (`https://hub.example.org/fhir`), for the absolute
    /// references in notification bundles; `http://<listen>/fhir` when empty.
    #[serde(default)]
    pub base_url: String,
    /// A list, or (as `HUB_SERVER__ROLES` and `--roles` take it) one comma-separated string.
    #[serde(deserialize_with = "roles")]
    pub roles: Vec<Role>,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    /// `/ready` fails when the matcher role has not come round its loop for this long.
    #[serde(default = "default_ready_stall_secs")]
    pub ready_stall_secs: u64,
    /// `/ready` fails when the matchers are more than this many change events behind on
    /// the change topic (their consumer group's lag); 0 reports the lag without failing.
    #[serde(default = "default_ready_max_lag")]
    pub ready_max_lag: u64,
    /// Seconds a client has to send a request's headers (and an idle keep-alive connection
    /// stays open); slow or idle connections are closed after it.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Most open connections on the API and gRPC listeners together; more are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most of them from one peer (an IPv4 address, or an IPv6 /64); 0: a sixty-fourth of
    /// `max_connections` (at least 64).
    #[serde(default)]
    pub max_connections_per_peer: usize,
    /// Seconds a connection may stay open with no request in flight (HTTP/1 keep-alive,
    /// HTTP/2 or gRPC with no open stream) before it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds a websocket may stay open without binding a subscription.
    #[serde(default = "default_unbound_websocket")]
    pub unbound_websocket_secs: u64,
}

fn default_binding_token_ttl() -> u64 {
    600
}

fn default_idle_timeout() -> u64 {
    60
}

fn default_unbound_websocket() -> u64 {
    10
}

fn default_allowed_ports() -> Vec<u16> {
    vec![80, 443, 8080, 8443]
}

fn default_header_read_timeout() -> u64 {
    10
}

fn default_max_connections() -> usize {
    0
}

/// The process's open-file limit (Linux: `/proc/self/limits`), if it can be read.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn default_ready_stall_secs() -> u64 {
    60
}

fn default_ready_max_lag() -> u64 {
    100_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    /// Days a delivered notification stays readable (`$events`, replay); 0 keeps them all.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Days the last-known version of a resource (the `%previous` the matcher supplies to
    /// topics when producers send none) is kept without a change; 0 keeps them all.
    #[serde(default = "default_previous_versions_days")]
    pub previous_versions_days: u32,
    /// Connections of the delivery role's own pool (its polling never takes the
    /// connections the matcher's appends and the API need).
    #[serde(default = "default_delivery_pool_size")]
    pub delivery_pool_size: u32,
    /// PostgreSQL: longest wait for a row lock before a statement fails (0: no limit).
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// PostgreSQL: longest any statement runs before it is cancelled (0: no limit).
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// PostgreSQL: a session idle inside a transaction this long is ended by the server,
    /// releasing its locks (0: never).
    #[serde(default = "default_idle_in_transaction_timeout_ms")]
    pub idle_in_transaction_timeout_ms: u64,
    /// How often the `LISTEN` connection (PostgreSQL) pings itself; one that hears nothing
    /// for two periods is replaced.
    #[serde(default = "default_listen_ping_ms")]
    pub listen_ping_ms: u64,
    /// The longest a reader of a notification log waits without looking at it, woken or not.
    #[serde(default = "default_safety_read_ms")]
    pub safety_read_ms: u64,
}

fn default_lock_timeout_ms() -> u64 {
    hub_store::Timeouts::default().lock_ms
}

fn default_statement_timeout_ms() -> u64 {
    hub_store::Timeouts::default().statement_ms
}

fn default_idle_in_transaction_timeout_ms() -> u64 {
    hub_store::Timeouts::default().idle_in_transaction_ms
}

fn default_listen_ping_ms() -> u64 {
    5000
}

fn default_safety_read_ms() -> u64 {
    10_000
}

fn default_delivery_pool_size() -> u32 {
    4
}

fn default_retention_days() -> u32 {
    30
}

fn default_previous_versions_days() -> u32 {
    365
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub backend: LogBackend,
    pub changes_topic: String,
    pub embedded_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub partitions: i32,
    pub replication: i32,
    pub matcher_group: String,
    pub request_timeout_ms: u64,
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherConfig {
    pub batch_size: usize,
    pub poll_ms: u64,
    pub reload_ms: u64,
    /// Most notifications one store transaction logs: a batch whose events reach many
    /// subscriptions is logged in several transactions, so the matcher's memory does not
    /// grow with batch size times fan-out.
    #[serde(default = "default_max_notifications_per_transaction")]
    pub max_notifications_per_transaction: usize,
    /// Bytes the spool file (`<data_dir>/quarantine-spool.ndjson`) may hold: where a record
    /// goes when the store refuses it even into quarantine. Past it such records are dropped
    /// (logged at ERROR and counted).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

fn default_max_notifications_per_transaction() -> usize {
    10_000
}

fn default_spool_max_bytes() -> u64 {
    64 * 1024 * 1024
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub request_timeout_ms: u64,
    pub poll_ms: u64,
    pub retry_schedule: Vec<String>,
    pub error_after_failures: usize,
    pub allowed_networks: Vec<String>,
    /// Ports public endpoints may use (empty: any); endpoints in allowed_networks may use any.
    #[serde(default = "default_allowed_ports")]
    pub allowed_ports: Vec<u16>,
    pub https_only: bool,
    pub ca_certificates: Vec<PathBuf>,
    pub lease_ttl_ms: i64,
    pub batch_size: i64,
    /// Concurrent requests (and kept connections) per endpoint origin.
    pub connections_per_origin: usize,
    /// A subscription with nothing to send for this long parks its worker (0: never).
    pub park_idle_after_ms: u64,
    /// A parked subscription idle for longer than this resolves its endpoint's name again
    /// when it wakes (0: at every wake).
    #[serde(default = "default_reresolve_parked_after_ms")]
    pub reresolve_parked_after_ms: u64,
}

fn default_reresolve_parked_after_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenancyConfig {
    pub default_tenant: String,
}

/// Command-line values that override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub roles: Option<Vec<Role>>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub kafka_brokers: Option<String>,
}

impl Config {
    /// The configuration as `fhir-hub config` shows it: the database password and any
    /// `kafka.client` credential (a key naming a password, secret or key) replaced by `***`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.database.url = hub_store::redact(&c.database.url);
        for v in c.secrets.keys.values_mut() {
            *v = "***".to_owned();
        }
        for (k, v) in c.kafka.client.iter_mut() {
            let k = k.to_ascii_lowercase();
            if ["password", "secret", "key", "token", "jaas"]
                .iter()
                .any(|s| k.contains(s))
            {
                *v = "***".to_owned();
            }
        }
        c
    }

    /// Load from the layers. `file` is the explicit `--config`; without it `./config.toml`
    /// is read when present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut config: Config = Self::layers(file)?.extract()?;
        config.kafka.client = kafka_property_names(std::mem::take(&mut config.kafka.client));
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// The layers below the command line: defaults, the file, `HUB_*` variables.
    fn layers(file: Option<&Path>) -> anyhow::Result<Figment> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        match file {
            Some(f) => {
                if !f.exists() {
                    anyhow::bail!("config file {} does not exist", f.display());
                }
                fig = fig.merge(Toml::file(f));
            }
            None => fig = fig.merge(Toml::file("config.toml")),
        }
        check_environment(std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()))?;
        Ok(fig.merge(
            Env::prefixed("HUB_")
                .filter(|k| is_config_variable(k.as_str()))
                .split("__"),
        ))
    }

    /// `fhir-hub config check`: load as [`Config::load`] does, and check what starting would
    /// read (the TLS certificate and key, the secrets keys) without starting: the
    /// configuration, or every problem found (each naming the key, and the file or
    /// variable it came from).
    pub fn check(file: Option<&Path>, overrides: &Overrides) -> Result<Config, Vec<String>> {
        let fig = Self::layers(file).map_err(|e| vec![format!("{e:#}")])?;
        let mut config: Config = fig
            .extract()
            .map_err(|e| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        config.kafka.client = kafka_property_names(std::mem::take(&mut config.kafka.client));
        config.apply(overrides);
        let mut problems = config.problems();
        if !config.tls.cert_file.as_os_str().is_empty()
            && !config.tls.key_file.as_os_str().is_empty()
            && let Err(e) = crate::tls::server_config(&config.tls, &[])
        {
            problems.push(format!("tls: {e:#}"));
        }
        if (!config.secrets.keys.is_empty() || !config.secrets.active.is_empty())
            && let Err(e) = config.sealer()
        {
            problems.push(format!("secrets: {e:#}"));
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// What `fhir-hub config check` prints of a valid configuration: the choices that shape
    /// a deployment, no secret (the database password is `***`, secrets keys are named by
    /// id only).
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let roles: Vec<&str> = self
            .server
            .roles
            .iter()
            .map(|r| match r {
                Role::Api => "api",
                Role::Matcher => "matcher",
                Role::Delivery => "delivery",
            })
            .collect();
        let listen = match self.listen_addrs() {
            Ok(a) if a.len() == 1 && a[0].to_string() == self.server.listen => {
                self.server.listen.clone()
            }
            Ok(a) => format!(
                "{} ({})",
                self.server.listen,
                a.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(_) => self.server.listen.clone(),
        };
        let log = match self.log.backend {
            LogBackend::Kafka => format!(
                "kafka at {}, topic '{}', {} partitions",
                self.kafka.brokers, self.log.changes_topic, self.kafka.partitions
            ),
            LogBackend::Embedded => format!(
                "embedded at {}, topic '{}'",
                self.embedded_log_path().display(),
                self.log.changes_topic
            ),
        };
        let or_off = |s: &str| {
            if s.is_empty() {
                "off".to_owned()
            } else {
                s.to_owned()
            }
        };
        let secrets = if self.secrets.keys.is_empty() && self.secrets.active.is_empty() {
            if self.database_url().starts_with("sqlite:") {
                "the local key file in the data directory".to_owned()
            } else {
                "none: secrets are stored unsealed".to_owned()
            }
        } else {
            format!(
                "active key '{}' of {} ({})",
                self.secrets.active,
                self.secrets.keys.len(),
                self.secrets
                    .keys
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        vec![
            ("roles", roles.join(", ")),
            ("listen", listen),
            ("base url", self.base_url()),
            ("grpc listen", or_off(&self.grpc.listen)),
            (
                "tls",
                if self.tls.cert_file.as_os_str().is_empty() {
                    "off".to_owned()
                } else {
                    self.tls.cert_file.display().to_string()
                },
            ),
            (
                "auth",
                format!(
                    "{:?} ({} issuers, {} client certificates)",
                    self.auth.mode,
                    self.auth.issuers.len(),
                    self.auth.client_certificates.len()
                )
                .to_lowercase(),
            ),
            ("database", hub_store::redact(&self.database_url())),
            ("log", log),
            ("secrets", secrets),
            ("data dir", self.server.data_dir.display().to_string()),
            ("default tenant", self.tenancy.default_tenant.clone()),
        ]
    }

    /// Defaults only (tests).
    pub fn defaults() -> anyhow::Result<Config> {
        let config: Config = Figment::from(Toml::string(DEFAULT_TOML)).extract()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(l) = &o.listen {
            self.server.listen = l.clone();
        }
        if let Some(r) = &o.roles {
            self.server.roles = r.clone();
        }
        if let Some(d) = &o.data_dir {
            self.server.data_dir = d.clone();
        }
        if let Some(u) = &o.database_url {
            self.database.url = u.clone();
        }
        if let Some(b) = &o.kafka_brokers {
            self.kafka.brokers = b.clone();
        }
        // Naming brokers is choosing Kafka.
        if !self.kafka.brokers.is_empty() {
            self.log.backend = LogBackend::Kafka;
        }
    }

    /// Check everything that can be checked before starting: the first problem, or all of
    /// them in one error, one per line.
    pub fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(problems.join("\n")))
        }
    }

    /// Every problem [`Config::validate`] finds, each a sentence naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let check = |r: anyhow::Result<()>, p: &mut Vec<String>| {
            if let Err(e) = r {
                p.push(format!("{e:#}"));
            }
        };
        check(self.listen_addrs().map(drop), &mut p);
        if !self.grpc.listen.is_empty() {
            check(resolve("grpc.listen", &self.grpc.listen).map(drop), &mut p);
        }
        if self.server.roles.is_empty() {
            p.push("server.roles is empty: name at least one of api, matcher, delivery".into());
        }
        if self.server.idle_timeout_secs == 0 || self.server.unbound_websocket_secs == 0 {
            p.push(
                "server.idle_timeout_secs and server.unbound_websocket_secs must be at least 1"
                    .into(),
            );
        }
        if self.streams.write_timeout_secs == 0 || self.streams.max_lag_events < 0 {
            p.push(
                "streams.write_timeout_secs must be at least 1 and streams.max_lag_events at least 0"
                    .into(),
            );
        }
        if self.server.max_body_bytes < 1024 {
            p.push("server.max_body_bytes must be at least 1024".into());
        }
        if self.log.backend == LogBackend::Kafka && self.kafka.brokers.trim().is_empty() {
            p.push("log.backend is kafka but kafka.brokers is empty".into());
        }
        if self.log.changes_topic.is_empty()
            || !self
                .log
                .changes_topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            p.push("log.changes_topic must be a valid Kafka topic name".into());
        }
        let db = self.database_url();
        if !(db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite:"))
        {
            p.push("database.url must start with postgres:// or sqlite://".into());
        }
        if self.kafka.partitions < 1 || self.kafka.replication < 1 {
            p.push("kafka.partitions and kafka.replication must be at least 1".into());
        }
        if self.matcher.batch_size == 0 || self.delivery.batch_size < 1 {
            p.push("batch sizes must be at least 1".into());
        }
        if self.matcher.max_notifications_per_transaction == 0 {
            p.push("matcher.max_notifications_per_transaction must be at least 1".into());
        }
        check(self.retry_schedule().map(drop), &mut p);
        check(self.extra_roots().map(drop), &mut p);
        check(self.egress_policy().map(drop), &mut p);
        if self.delivery.lease_ttl_ms < 2 * self.delivery.poll_ms as i64 {
            p.push("delivery.lease_ttl_ms must be at least twice delivery.poll_ms".into());
        }
        if self.database.listen_ping_ms < 100 || self.database.safety_read_ms < 100 {
            p.push(
                "database.listen_ping_ms and database.safety_read_ms must be at least 100".into(),
            );
        }
        if self.delivery.error_after_failures == 0 {
            p.push("delivery.error_after_failures must be at least 1".into());
        }
        check(self.check_open_mode().map(drop), &mut p);
        check(self.check_cors().map(drop), &mut p);
        if !(1..=86_400).contains(&self.auth.binding_token_ttl_secs) {
            p.push("auth.binding_token_ttl_secs must be between 1 and 86400".into());
        }
        if self.tls.cert_file.as_os_str().is_empty() != self.tls.key_file.as_os_str().is_empty() {
            p.push("tls.cert_file and tls.key_file go together".into());
        }
        if !self.auth.client_certificates.is_empty()
            && self.tls.client_ca_file.as_os_str().is_empty()
        {
            p.push("auth.client_certificates needs tls.client_ca_file to verify them".into());
        }
        for i in &self.auth.issuers {
            if i.issuer.is_empty() || i.jwks_url.is_empty() || i.audience.is_empty() {
                p.push("auth.issuers: each issuer needs issuer, jwks_url and audience".into());
            }
            if let Some(bad) = i
                .tenants
                .iter()
                .find(|t| !hub_fhir::event::is_tenant_name(t))
            {
                p.push(format!(
                    "auth.issuers '{}': tenant '{bad}' is not a tenant name",
                    i.issuer
                ));
            }
        }
        if !hub_fhir::event::is_tenant_name(&self.tenancy.default_tenant) {
            p.push("tenancy.default_tenant must be 1-64 characters of [a-z0-9-_]".into());
        }
        p
    }

    /// Each allowed origin is what a browser sends in `Origin` (compared byte for byte):
    /// `scheme://host[:port]`, lower case, no path; `*` alone; none in open mode.
    fn check_cors(&self) -> anyhow::Result<()> {
        let origins = &self.cors.allowed_origins;
        if origins.is_empty() {
            return Ok(());
        }
        if self.auth.mode == AuthMode::Open {
            anyhow::bail!(
                "cors.allowed_origins is set but auth.mode is \"open\": any page the user opens \
                 could then read the hub as its operator. Set auth.mode = \"required\"."
            );
        }
        if origins.iter().any(|o| o == "*") {
            if origins.len() > 1 {
                anyhow::bail!("cors.allowed_origins: \"*\" (any origin) goes alone");
            }
            return Ok(());
        }
        for o in origins {
            let uri = o.parse::<axum::http::Uri>().ok();
            let well_formed = uri.as_ref().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some_and(|a| !a.as_str().contains('@'))
                    && u.path_and_query().is_none_or(|p| p.as_str() == "/")
            }) && !o.ends_with('/')
                && *o == o.to_ascii_lowercase();
            if !well_formed {
                anyhow::bail!(
                    "cors.allowed_origins: '{o}' is not an origin as browsers send it \
                     (lower-case scheme://host[:port], no path, e.g. https://dashboard.example.org)"
                );
            }
        }
        Ok(())
    }

    /// Open mode serves anyone who reaches the port: only on loopback addresses (as Redis'
    /// protected mode).
    fn check_open_mode(&self) -> anyhow::Result<()> {
        if self.auth.mode != AuthMode::Open {
            return Ok(());
        }
        let mut exposed = Vec::new();
        let exposes = |addrs: anyhow::Result<Vec<SocketAddr>>| {
            addrs.is_ok_and(|a| a.iter().any(|a| !a.ip().is_loopback()))
        };
        if self.has_role(Role::Api) && exposes(self.listen_addrs()) {
            exposed.push(format!("server.listen {}", self.server.listen));
        }
        if self.has_role(Role::Api)
            && !self.grpc.listen.is_empty()
            && exposes(resolve("grpc.listen", &self.grpc.listen))
        {
            exposed.push(format!("grpc.listen {}", self.grpc.listen));
        }
        if !exposed.is_empty() {
            anyhow::bail!(
                "auth.mode is \"open\" (no credentials needed) but {} is not a loopback address. \
                 Set auth.mode = \"required\" (HUB_AUTH__MODE=required) and create an API key with \
                 `fhir-hub keys create --tenant <tenant> --scope \"system/Subscription.cruds system/*.rs\"`, \
                 or configure auth.issuers for OAuth2 tokens; or listen on 127.0.0.1 only.",
                exposed.join(" and ")
            );
        }
        Ok(())
    }

    /// What seals secrets at rest: the configured keys; on SQLite without them, a key kept
    /// in the data directory; on PostgreSQL without them, nothing (with a warning).
    pub fn sealer(&self) -> anyhow::Result<crate::auth::sealed::Sealer> {
        use crate::auth::sealed::Sealer;
        if !self.secrets.keys.is_empty()
            || !self.secrets.key_files.is_empty()
            || !self.secrets.active.is_empty()
        {
            let mut keys: std::collections::HashMap<String, String> =
                self.secrets.keys.clone().into_iter().collect();
            for (id, path) in &self.secrets.key_files {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("secrets.key_files.{id}: {}: {e}", path.display())
                })?;
                if keys.insert(id.clone(), text.trim().to_owned()).is_some() {
                    anyhow::bail!(
                        "secrets key '{id}' is both in secrets.keys and secrets.key_files"
                    );
                }
            }
            return Sealer::new(&keys, &self.secrets.active);
        }
        if self.database_url().starts_with("sqlite:") {
            return Sealer::local(&self.server.data_dir);
        }
        tracing::warn!(
            "secrets.active is not set: webhook secrets, client keys and credential headers are stored unsealed in PostgreSQL"
        );
        Ok(Sealer::default())
    }

    /// The addresses `server.listen` names: an IP address and port, or a host name and port
    /// (`localhost:8080`), resolved. The listener binds the first that works.
    pub fn listen_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        resolve("server.listen", &self.server.listen)
    }

    /// The first of [`Config::listen_addrs`].
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen_addrs()?.first().copied().ok_or_else(|| {
            anyhow::anyhow!("server.listen '{}' names no address", self.server.listen)
        })
    }

    pub fn retry_schedule(&self) -> anyhow::Result<crate::delivery::schedule::Schedule> {
        crate::delivery::schedule::Schedule::parse(&self.delivery.retry_schedule)
            .map_err(|e| anyhow::anyhow!("delivery.retry_schedule: {e}"))
    }

    pub fn egress_policy(&self) -> anyhow::Result<crate::delivery::ssrf::EgressPolicy> {
        let allowed = self
            .delivery
            .allowed_networks
            .iter()
            .map(|n| crate::delivery::ssrf::Network::parse(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("delivery.allowed_networks: {e}"))?;
        Ok(crate::delivery::ssrf::EgressPolicy {
            allowed,
            https_only: self.delivery.https_only,
            ports: self.delivery.allowed_ports.clone(),
        })
    }

    /// Extra trusted root certificates for endpoints (private CAs).
    pub fn extra_roots(&self) -> anyhow::Result<Vec<reqwest::Certificate>> {
        let mut out = Vec::new();
        for path in &self.delivery.ca_certificates {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("delivery.ca_certificates: {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!("delivery.ca_certificates: {}: {e}", path.display())
            })?;
            out.extend(certs);
        }
        Ok(out)
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.server.roles.contains(&role)
    }

    /// The most open connections on the API and gRPC listeners: `server.max_connections`,
    /// or (0) the open-file limit less 1,000 descriptors kept for the store, the log and
    /// outgoing deliveries.
    pub fn max_connections(&self) -> usize {
        match self.server.max_connections {
            0 => open_files_limit()
                .map_or(10_000, |n| n.saturating_sub(1_000))
                .max(256),
            n => n,
        }
    }

    /// The most of them one peer may hold: `server.max_connections_per_peer`, or (0) a
    /// sixty-fourth of the total (at least 64), so that a few addresses cannot take every place.
    pub fn max_connections_per_peer(&self) -> usize {
        let total = self.max_connections();
        match self.server.max_connections_per_peer {
            // a small share: a quarter let four addresses (one IPv6 /62) fill the listener
            0 => (total / 64).max(64).min(total),
            n => n.min(total),
        }
    }

    /// `https` with TLS configured, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.cert_file.as_os_str().is_empty() {
            "http"
        } else {
            "https"
        }
    }

    /// Why the base URL the hub falls back to is not one clients can use: `server.base_url`
    /// is empty and the API listens on an unspecified address (`0.0.0.0`, `[::]`), as in a
    /// container. The hub does not guess a host name (a request's `Host` is the caller's
    /// word, and rest-hook bundles are built with no request at all): it says so at start.
    pub fn base_url_warning(&self) -> Option<String> {
        if !self.server.base_url.is_empty() || !self.has_role(Role::Api) {
            return None;
        }
        let addr = self.listen_addr().ok()?;
        addr.ip().is_unspecified().then(|| {
            format!(
                "server.base_url is not set and server.listen is {}: websocket URLs, $status and \
                 notification bundles will name {}://{addr}/fhir, which no client can reach. \
                 Set server.base_url (HUB_SERVER__BASE_URL) to the URL clients use",
                self.server.listen,
                self.scheme()
            )
        })
    }

    /// The FHIR base URL for references in notifications (no trailing slash).
    pub fn base_url(&self) -> String {
        if self.server.base_url.is_empty() {
            format!("{}://{}/fhir", self.scheme(), self.server.listen)
        } else {
            self.server.base_url.trim_end_matches('/').to_owned()
        }
    }

    /// The PostgreSQL session limits of every pooled connection.
    pub fn database_timeouts(&self) -> hub_store::Timeouts {
        hub_store::Timeouts {
            lock_ms: self.database.lock_timeout_ms,
            statement_ms: self.database.statement_timeout_ms,
            idle_in_transaction_ms: self.database.idle_in_transaction_timeout_ms,
        }
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.server.data_dir.join("hub.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// The SQLite files this process keeps its data in (the store, the embedded log): created
    /// with mode 0600 before SQLite opens them, and narrowed to 0600 when they exist (their
    /// `-wal` and `-shm` files take the same mode). They hold every notification.
    pub fn make_data_files_private(&self) -> anyhow::Result<()> {
        let mut files = Vec::new();
        let url = self.database_url();
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let path = rest.split('?').next().unwrap_or(rest);
            if !path.is_empty() && !path.starts_with(':') {
                files.push(PathBuf::from(path));
            }
        }
        if self.log.backend == LogBackend::Embedded {
            files.push(self.embedded_log_path());
        }
        for f in files {
            private_file(&f).map_err(|e| anyhow::anyhow!("making {} private: {e}", f.display()))?;
        }
        Ok(())
    }

    pub fn embedded_log_path(&self) -> PathBuf {
        if self.log.embedded_path.is_empty() {
            self.server.data_dir.join("log.db")
        } else {
            PathBuf::from(&self.log.embedded_path)
        }
    }

    pub fn kafka_settings(&self) -> hub_log::kafka::KafkaSettings {
        let mut s = hub_log::kafka::KafkaSettings::new(self.kafka.brokers.clone());
        s.partitions = self.kafka.partitions;
        s.replication = self.kafka.replication;
        s.client = self.kafka.client.clone();
        s.request_timeout = Duration::from_millis(self.kafka.request_timeout_ms);
        s
    }
}

/// Whether `key` (a `HUB_` variable's name without the prefix) is a configuration variable:
/// `<SECTION>__<KEY>`. Kubernetes injects `<SERVICE>_PORT=tcp://…`, `<SERVICE>_SERVICE_HOST`
/// and the like for every Service of a namespace, so a Service named `hub` (or `hub-api`)
/// puts `HUB_PORT`, `HUB_SERVICE_HOST`, `HUB_API_PORT_8080_TCP_ADDR` … into every pod: those
/// are never configuration and are skipped.
fn is_config_variable(key: &str) -> bool {
    key.contains("__")
}

/// A Kubernetes service-link variable's name without the `HUB_` prefix (`PORT`,
/// `SERVICE_HOST`, `API_PORT_8080_TCP_ADDR`, `SERVICE_PORT_HTTP`).
fn is_service_link(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    let words: Vec<&str> = k.split('_').collect();
    // `[<name>_]SERVICE_HOST`, `[<name>_]SERVICE_PORT[_<port name>]`
    if let Some(i) = words.iter().position(|w| *w == "SERVICE")
        && matches!(words.get(i + 1), Some(&"HOST") | Some(&"PORT"))
    {
        return words.get(i + 1) == Some(&"PORT") || words.len() == i + 2;
    }
    // `[<name>_]PORT`, `[<name>_]PORT_<n>_<proto>[_PROTO|_PORT|_ADDR]`
    match words.iter().rposition(|w| *w == "PORT") {
        Some(i) if i + 1 == words.len() => true,
        Some(i) => {
            // the last PORT may be the `_PORT` suffix of `PORT_<n>_<proto>_PORT`
            let start = words[..i]
                .iter()
                .rposition(|w| *w == "PORT")
                .filter(|&j| i == j + 3)
                .unwrap_or(i);
            let rest = &words[start + 1..];
            rest.len() >= 2
                && rest[0].bytes().all(|b| b.is_ascii_digit())
                && matches!(rest[1], "TCP" | "UDP" | "SCTP")
                && (rest.len() == 2
                    || (rest.len() == 3 && matches!(rest[2], "PROTO" | "PORT" | "ADDR")))
        }
        None => false,
    }
}

/// Refuse a `HUB_` variable that is neither a configuration variable nor a Kubernetes
/// service link (`HUB_DATABASE_URL` for `HUB_DATABASE__URL`): it would be ignored silently.
fn check_environment(names: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    for name in names {
        let Some(key) = name
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("HUB_"))
            .map(|_| &name[4..])
        else {
            continue;
        };
        if !key.is_empty() && !is_config_variable(key) && !is_service_link(key) {
            anyhow::bail!(
                "environment variable {name} is not a configuration variable: they are named \
                 HUB_<SECTION>__<KEY> with two underscores between levels, like \
                 HUB_DATABASE__URL or HUB_KAFKA__CLIENT__SASL_PASSWORD"
            );
        }
    }
    Ok(())
}

/// librdkafka property names from `kafka.client` keys: `_` becomes `.`, so that an
/// environment variable, whose name cannot hold a dot, can set any property
/// (`HUB_KAFKA__CLIENT__SASL_PASSWORD` sets `sasl.password`). No property settable as text
/// has an underscore in its name.
fn kafka_property_names(client: BTreeMap<String, String>) -> BTreeMap<String, String> {
    client
        .into_iter()
        .map(|(k, v)| (k.replace('_', "."), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        for link in [
            "PORT",
            "PORT_8080_TCP",
            "PORT_8080_TCP_PROTO",
            "PORT_8080_TCP_PORT",
            "PORT_8080_TCP_ADDR",
            "SERVICE_HOST",
            "SERVICE_PORT",
            "SERVICE_PORT_HTTP",
            "SERVICE_PORT_GRPC_WEB",
            "API_PORT",
            "API_PORT_50051_TCP_ADDR",
            "API_SERVICE_HOST",
            "DELIVERY_SERVICE_PORT",
            "API_PORT_53_UDP",
        ] {
            assert!(is_service_link(link), "{link}");
            assert!(!is_config_variable(link), "{link}");
            check_environment([format!("HUB_{link}")]).unwrap();
        }
        for not_link in [
            "DATABASE_URL",
            "PORTS",
            "PORT_X_TCP",
            "SERVICE_HOSTS",
            "LISTEN",
        ] {
            assert!(!is_service_link(not_link), "{not_link}");
            let e = check_environment([format!("HUB_{not_link}")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("HUB_<SECTION>__<KEY>"), "{e}");
        }
        check_environment(["HUB_DATABASE__URL".into(), "PATH".into(), "HUB_".into()]).unwrap();
    }

    #[test]
    fn secrets_keys_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k1");
        // 32 bytes in base64, with the newline `openssl rand -base64 32 >file` leaves
        std::fs::write(&file, "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=\n").unwrap();
        let mut c = Config::defaults().unwrap();
        c.secrets.active = "k1".into();
        c.secrets.key_files.insert("k1".into(), file.clone());
        let sealer = c.sealer().unwrap();
        assert!(sealer.is_active());
        assert_eq!(sealer.fingerprints().count(), 1);
        c.secrets.keys.insert(
            "k1".into(),
            "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=".into(),
        );
        let e = c.sealer().unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
        c.secrets.keys.clear();
        c.secrets
            .key_files
            .insert("k1".into(), dir.path().join("missing"));
        let e = c.sealer().unwrap_err().to_string();
        assert!(e.contains("secrets.key_files.k1"), "{e}");
    }

    #[test]
    fn kafka_properties_take_dots_for_underscores() {
        let m = kafka_property_names(BTreeMap::from([
            ("sasl_password".to_owned(), "p".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ("ssl_ca_location".to_owned(), "/ca.pem".to_owned()),
        ]));
        assert_eq!(m["sasl.password"], "p");
        assert_eq!(m["security.protocol"], "SASL_SSL", "values are left alone");
        assert_eq!(m["ssl.ca.location"], "/ca.pem");
    }

    #[test]
    fn an_unspecified_listen_address_without_base_url_is_warned_about() {
        let mut c = Config::defaults().unwrap();
        assert!(
            c.base_url_warning().is_none(),
            "loopback: the URL works there"
        );
        c.server.listen = "0.0.0.0:8080".into();
        let w = c.base_url_warning().unwrap();
        assert!(
            w.contains("http://0.0.0.0:8080/fhir") && w.contains("HUB_SERVER__BASE_URL"),
            "{w}"
        );
        c.server.listen = "[::]:8080".into();
        assert!(c.base_url_warning().is_some());
        c.server.base_url = "https://hub.example.org/fhir".into();
        assert!(c.base_url_warning().is_none());
        c.server.base_url.clear();
        c.server.roles = vec![Role::Delivery];
        assert!(c.base_url_warning().is_none(), "no API, no listener");
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let c = Config::defaults().unwrap();
        c.validate().unwrap();
        assert_eq!(c.log.backend, LogBackend::Embedded);
        assert_eq!(c.database_url(), "sqlite://./data/hub.db");
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.auth.mode, AuthMode::Open);
    }

    #[test]
    fn connection_cap_follows_the_open_files_limit() {
        let mut c = Config::defaults().unwrap();
        let auto = c.max_connections();
        assert!(auto >= 256, "{auto}");
        if let Some(limit) = open_files_limit() {
            assert!(
                auto < limit.max(257),
                "the cap leaves descriptors for the rest"
            );
        }
        c.server.max_connections = 123;
        assert_eq!(c.max_connections(), 123);
        assert_eq!(
            c.max_connections_per_peer(),
            64,
            "a 64th by default, at least 64"
        );
        c.server.max_connections = 12_800;
        assert_eq!(c.max_connections_per_peer(), 200, "a 64th by default");
        c.server.max_connections = 5;
        assert_eq!(c.max_connections_per_peer(), 5, "never above the total");
        c.server.max_connections = 123;
        c.server.max_connections_per_peer = 500;
        assert_eq!(c.max_connections_per_peer(), 123, "never above the total");
    }

    #[test]
    fn open_mode_refuses_other_than_loopback() {
        let mut c = Config::defaults().unwrap();
        c.server.listen = "0.0.0.0:8080".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.mode") && e.contains("keys create"), "{e}");
        c.auth.mode = AuthMode::Required;
        c.validate().unwrap();
        let mut c = Config::defaults().unwrap();
        c.grpc.listen = "[::]:50051".into();
        assert!(c.validate().is_err());
        c.grpc.listen = "[::1]:50051".into();
        c.validate().unwrap();
        // a process without the api role listens on nothing
        c.server.listen = "0.0.0.0:8080".into();
        c.server.roles = vec![Role::Matcher];
        c.validate().unwrap();
    }

    #[test]
    fn host_names_listen_and_every_problem_is_reported() {
        let mut c = Config::defaults().unwrap();
        c.server.listen = "localhost:0".into();
        // localhost is loopback whichever family it resolves to: open mode stays allowed
        c.validate().unwrap();
        assert!(
            c.listen_addrs()
                .unwrap()
                .iter()
                .all(|a| a.ip().is_loopback())
        );
        c.server.listen = "localhost".into();
        assert!(c.validate().unwrap_err().to_string().contains("host:port"));
        c.server.listen = "nowhere.invalid:8080".into();
        c.matcher.batch_size = 0;
        let problems = c.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("does not resolve"), "{problems:?}");
        let roles: ServerConfig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[server]\nroles = \"matcher, delivery\""))
            .extract_inner("server")
            .unwrap();
        assert_eq!(roles.roles, vec![Role::Matcher, Role::Delivery]);
    }

    #[test]
    fn brokers_select_kafka_and_bad_values_are_refused() {
        let mut c = Config::defaults().unwrap();
        c.apply(&Overrides {
            kafka_brokers: Some("127.0.0.1:9092".into()),
            ..Default::default()
        });
        assert_eq!(c.log.backend, LogBackend::Kafka);
        c.database.url = "mysql://x".into();
        assert!(c.validate().is_err());
        let mut c = Config::defaults().unwrap();
        c.server.listen = "nope".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn cors_origins_are_exact_and_none_by_default() {
        let mut c = Config::defaults().unwrap();
        assert!(
            c.cors.allowed_origins.is_empty(),
            "no page may read by default"
        );
        assert_eq!(c.auth.binding_token_ttl_secs, 600);
        c.cors.allowed_origins = vec!["https://dash.example.org".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("open"), "never on an open hub: {e}");
        c.auth.mode = AuthMode::Required;
        c.validate().unwrap();
        for ok in [
            vec!["http://127.0.0.1:8000", "https://dash.example.org:8443"],
            vec!["*"],
        ] {
            c.cors.allowed_origins = ok.iter().map(|s| s.to_string()).collect();
            c.validate().unwrap();
        }
        for bad in [
            "https://dash.example.org/",
            "https://dash.example.org/app",
            "https://Dash.example.org",
            "dash.example.org",
            "ftp://dash.example.org",
            "https://user@dash.example.org",
        ] {
            c.cors.allowed_origins = vec![bad.into()];
            assert!(c.validate().is_err(), "{bad}");
        }
        c.cors.allowed_origins = vec!["*".into(), "https://dash.example.org".into()];
        assert!(c.validate().is_err());
        c.cors.allowed_origins.clear();
        c.auth.binding_token_ttl_secs = 0;
        assert!(c.validate().is_err());
    }
}
