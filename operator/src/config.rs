//! The operator's configuration: every setting is a flag with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

/// How the operator runs (`coffer-operator run --help`).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Base URL of coffer-server for `Project` resources without `spec.serverUrl`.
    #[arg(long, env = "COFFER_SERVER_URL")]
    pub server_url: Option<String>,

    /// Token (service token or API key) for `Project` resources without
    /// `spec.credentialsRef`.
    #[arg(long, env = "COFFER_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<SecretString>,

    /// coffer-servers a `Project` may name in `spec.serverUrl`, comma-separated origins
    /// (`https://coffer.example.com`, `http://coffer.coffer.svc:8080`), or `*` for any server
    /// over https (and plain http to loopback only). `COFFER_SERVER_URL` is always allowed.
    /// Default: only `COFFER_SERVER_URL`.
    #[arg(long, env = "COFFER_ALLOWED_SERVERS", value_delimiter = ',', value_parser = parse_allowed_server)]
    pub allowed_servers: Vec<String>,

    /// PEM file of CA certificates trusted, besides the system's, for coffer-server's TLS.
    #[arg(long, env = "COFFER_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// Namespaces to watch, comma-separated. Default: every namespace.
    #[arg(long, env = "COFFER_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Address of the HTTP server for `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "COFFER_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,

    /// Take part in leader election, so that of several replicas only one acts at a time.
    #[arg(
        long,
        env = "COFFER_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,

    /// Namespace of the operator's own objects: the leader-election Lease and the Secret with
    /// the key of the data hashes. Default: the namespace the operator runs in.
    #[arg(long, env = "COFFER_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(long, env = "COFFER_LEASE_NAME", default_value = "coffer-operator")]
    pub lease_name: String,

    /// Name of the Secret (in the operator namespace) holding the key of the data hashes; created
    /// when missing.
    #[arg(
        long,
        env = "COFFER_HASH_KEY_SECRET",
        default_value = "coffer-operator-hash-key"
    )]
    pub hash_key_secret: String,

    /// How many resources each controller reconciles at once (per namespace of
    /// `COFFER_NAMESPACES`, or over every namespace). Bounds the operator's load on the API
    /// server and on coffer-server after a restart or a wave of changes.
    #[arg(
        long,
        env = "COFFER_MAX_CONCURRENT_RECONCILES",
        default_value_t = 10,
        value_parser = clap::value_parser!(u16).range(1..=1000)
    )]
    pub concurrency: u16,

    /// Follow coffer-server's event stream of each project that `Environment` resources read,
    /// so that a change reaches its Secrets within about a second (`status.syncMode: Push`).
    /// `false`: read every environment at its `refreshInterval` only (`Poll`), for a server or
    /// proxy that cannot carry long-lived Server-Sent Events.
    #[arg(
        long,
        env = "COFFER_EVENT_STREAMS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub event_streams: bool,

    /// How long a dynamic secret's lease that was replaced by the next one (its Secret holds
    /// the new credentials, its workloads were restarted) stays valid before the operator
    /// revokes it, so that pods still starting with the old credentials keep working, e.g.
    /// `2m` (hours, minutes and seconds). Never beyond the lease's own expiry.
    #[arg(long, env = "COFFER_LEASE_REVOKE_GRACE", default_value = "2m", value_parser = parse_grace)]
    pub lease_revoke_grace: Duration,

    /// This replica's identity in leader election and events. Default: the pod name
    /// (`POD_NAME`), else the host name, else a random one.
    #[arg(long, env = "COFFER_OPERATOR_IDENTITY")]
    pub identity: Option<String>,
}

fn parse_grace(value: &str) -> Result<Duration, String> {
    crate::crd::parse_duration(value.trim()).map_err(|e| e.to_string())
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("the token is empty".to_owned());
    }
    Ok(SecretString::from(value.to_owned()))
}

/// An entry of `COFFER_ALLOWED_SERVERS`: `*`, or a URL reduced to its origin
/// (`https://coffer.example.com:8443`; the default port is left out).
fn parse_allowed_server(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value == "*" {
        return Ok(value.to_owned());
    }
    let url = reqwest::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{value:?} is not an http or https URL with a host"));
    }
    Ok(url.origin().ascii_serialization())
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl Config {
    /// The operator namespace: configured, else the pod's own (in a cluster), else `default`.
    pub fn operator_namespace(&self) -> String {
        if let Some(ns) = self.operator_namespace.as_deref().filter(|n| !n.is_empty()) {
            return ns.to_owned();
        }
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .ok()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }

    /// This replica's identity: configured, else the pod or host name, else random.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| {
                use rand::Rng as _;
                format!("coffer-operator-{:016x}", rand::thread_rng().r#gen::<u64>())
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;
    use secrecy::ExposeSecret as _;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn flags_parse_and_defaults_apply() {
        let cli = Cli::try_parse_from([
            "coffer-operator",
            "--server-url",
            "https://coffer.example.com",
            "--token",
            " cfr_abc ",
            "--namespaces",
            "apps,payments",
            "--leader-election",
            "false",
        ])
        .unwrap();
        let c = cli.config;
        assert_eq!(c.server_url.as_deref(), Some("https://coffer.example.com"));
        assert_eq!(c.token.unwrap().expose_secret(), "cfr_abc");
        assert_eq!(c.namespaces, ["apps", "payments"]);
        assert!(!c.leader_election);
        assert_eq!(c.metrics_addr.port(), 8081);
        assert_eq!(c.lease_name, "coffer-operator");
        assert!(c.allowed_servers.is_empty());
        assert_eq!(c.ca_bundle, None);
        assert!(c.event_streams);
        assert_eq!(c.lease_revoke_grace, Duration::from_secs(120));
    }

    #[test]
    fn allowed_servers_are_origins() {
        let cli = Cli::try_parse_from([
            "coffer-operator",
            "--allowed-servers",
            "https://Coffer.Example.com:443/api/,http://coffer.coffer.svc:8080,*",
        ])
        .unwrap();
        assert_eq!(
            cli.config.allowed_servers,
            [
                "https://coffer.example.com",
                "http://coffer.coffer.svc:8080",
                "*"
            ]
        );
        for bad in ["coffer.example.com", "ftp://coffer.example.com", "https://"] {
            assert!(
                Cli::try_parse_from(["coffer-operator", "--allowed-servers", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let cli = Cli::try_parse_from(["coffer-operator", "--token", "cfr_topsecret"]).unwrap();
        assert!(!format!("{cli:?}").contains("topsecret"));
    }

    #[test]
    fn an_empty_token_is_refused() {
        assert!(Cli::try_parse_from(["coffer-operator", "--token", " "]).is_err());
    }
}
