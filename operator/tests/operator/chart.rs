//! The Helm chart, `charts/coffer`: linted, rendered with representative values and validated
//! against the schemas of Kubernetes 1.20 and of a current version, its values schema refusing
//! wrong values, and `helm install`, `upgrade` and `uninstall` against the real control plane,
//! with coffer-server and the operator binary run from what the chart installed (settings, keys,
//! certificate, ServiceAccount token), as the kubelet would run them.
//!
//! helm and kubernetes-validate come from `tests/chart/tools.sh install` (which `.ci/run` calls).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use coffer_operator::crd::{Environment, Project};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{Api, ListParams, PostParams};
use kube_testenv::TestEnv;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::deploy::{assert_forbidden, project_and_environment, wait_for_value};
use crate::support::*;

/// The versions `tests/chart/tools.sh` installs.
const HELM_VERSION: &str = "v3.17.2";
/// Kubernetes versions the rendered manifests are validated for, with the kubernetes-validate
/// release that holds their schemas.
const VALIDATED: [(&str, &str); 2] = [("1.20.0", "1.28.3"), ("1.37.0", "1.37.0")];
const RELEASE: &str = "coffer";

fn repo_path(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn chart_dir() -> PathBuf {
    repo_path("charts/coffer")
}

/// The chart's value sets: the defaults (none) and each file of `charts/coffer/ci`.
fn value_sets() -> Vec<Option<PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "representative value sets in charts/coffer/ci"
    );
    std::iter::once(None)
        .chain(files.into_iter().map(Some))
        .collect()
}

struct Tools {
    helm: PathBuf,
    root: PathBuf,
    /// HELM_CACHE_HOME, HELM_CONFIG_HOME and HELM_DATA_HOME: nothing written to $HOME.
    home: tempfile::TempDir,
}

/// helm and kubernetes-validate, or `None` (after saying why) when they are not installed;
/// with `CI=true` a failure instead.
fn tools() -> Option<Tools> {
    let root = std::env::var_os("COFFER_CHART_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/coffer/chart-tools"));
    let helm = root.join(format!("helm-{HELM_VERSION}/helm"));
    let validators = VALIDATED.iter().all(|(_, v)| {
        root.join(format!("kubernetes-validate-{v}/.complete"))
            .exists()
    });
    if !helm.exists() || !validators {
        let why = format!(
            "helm or kubernetes-validate is not in {} (run tests/chart/tools.sh install)",
            root.display()
        );
        let test = std::thread::current().name().unwrap_or("test").to_owned();
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why} (CI=true, so {test} fails instead of being skipped)"
        );
        let _ = writeln!(std::io::stderr(), "chart tests: skipping {test}: {why}");
        return None;
    }
    Some(Tools {
        helm,
        root,
        home: tempfile::tempdir().unwrap(),
    })
}

impl Tools {
    fn helm(&self) -> Command {
        let mut command = Command::new(&self.helm);
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            command.env(var, self.home.path().join(dir));
        }
        command
    }

    /// `helm` against the test control plane.
    fn helm_in(&self, env: &TestEnv, namespace: &str) -> Command {
        let mut command = self.helm();
        command
            .env("KUBECONFIG", env.kubeconfig_path())
            .args(["--namespace", namespace]);
        command
    }

    /// `helm template` of the chart with `values` for Kubernetes `kube_version`.
    fn render(&self, values: Option<&Path>, kube_version: &str, extra: &[&str]) -> String {
        let mut command = self.helm();
        command
            .args(["template", RELEASE])
            .arg(chart_dir())
            .args([
                "--namespace",
                "coffer-system",
                "--kube-version",
                kube_version,
            ])
            .args(extra);
        if let Some(values) = values {
            command.arg("--values").arg(values);
        }
        let out = succeed(&mut command, "helm template");
        String::from_utf8(out.stdout).unwrap()
    }

    /// kubernetes-validate, strict (unknown fields are errors), of `manifest` for `kube_version`.
    fn validate(&self, manifest: &str, kube_version: &str, validator: &str) -> Output {
        let file = self
            .home
            .path()
            .join(format!("manifest-{kube_version}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        Command::new("python3")
            .env(
                "PYTHONPATH",
                self.root.join(format!("kubernetes-validate-{validator}")),
            )
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--no-warn",
                "--quiet",
            ])
            .args(["--kubernetes-version", kube_version])
            .arg(&file)
            .output()
            .unwrap()
    }
}

#[track_caller]
fn succeed(command: &mut Command, what: &str) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The documents of a YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every container of every Deployment runs as the hardening asks.
fn assert_hardened(documents: &[Value], set: &str) {
    for deployment in of_kind(documents, "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"], true,
            "{set}: {name}"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{set}: {name}"
        );
        // Only the operator works through the Kubernetes API.
        assert_eq!(
            pod["automountServiceAccountToken"],
            name.ends_with("-operator"),
            "{set}: {name}"
        );
        assert!(
            !pod["topologySpreadConstraints"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        for container in pod["containers"].as_array().unwrap() {
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{set}: {name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{set}: {name}");
            assert_eq!(security["runAsNonRoot"], true, "{set}: {name}");
            assert_eq!(
                security["capabilities"]["drop"],
                json!(["ALL"]),
                "{set}: {name}"
            );
            assert_eq!(
                security["seccompProfile"]["type"], "RuntimeDefault",
                "{set}: {name}"
            );
            for probe in ["livenessProbe", "readinessProbe"] {
                assert!(container[probe].is_object(), "{set}: {name} has no {probe}");
            }
            assert!(
                container["resources"]["requests"].is_object(),
                "{set}: {name}"
            );
        }
    }
    for document in documents {
        let labels = &document["metadata"]["labels"];
        for label in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(
                labels[label].is_string(),
                "{set}: {} {} has no label {label}",
                document["kind"],
                document["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_chart_lints_strictly_and_renders_valid_manifests_for_kubernetes_1_20_and_current() {
    let Some(tools) = tools() else { return };
    for values in value_sets() {
        let set = values
            .as_deref()
            .map_or("the default values".to_owned(), |p| p.display().to_string());
        let mut lint = tools.helm();
        lint.args(["lint", "--strict"]).arg(chart_dir());
        if let Some(values) = &values {
            lint.arg("--values").arg(values);
        }
        succeed(&mut lint, &format!("helm lint --strict with {set}"));

        for (kube_version, validator) in VALIDATED {
            let manifest = tools.render(values.as_deref(), kube_version, &[]);
            let docs = documents(&manifest);
            assert_hardened(&docs, &set);
            // No hooks: `helm install` creates everything at once, nothing runs to completion.
            assert!(!manifest.contains("helm.sh/hook"), "{set}");
            assert!(of_kind(&docs, "Job").is_empty(), "{set}");
            let pdb_version = if kube_version == "1.20.0" {
                "policy/v1beta1"
            } else {
                "policy/v1"
            };
            for pdb in of_kind(&docs, "PodDisruptionBudget") {
                assert_eq!(pdb["apiVersion"], pdb_version, "{set}");
            }
            // The Prometheus Operator's kind is not in Kubernetes' schemas: checked apart.
            let (known, monitors): (Vec<_>, Vec<_>) =
                docs.iter().partition(|d| d["kind"] != "ServiceMonitor");
            for monitor in monitors {
                assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
                assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
            }
            let known = known
                .iter()
                .map(|d| serde_norway::to_string(d).unwrap())
                .collect::<Vec<_>>()
                .join("---\n");
            let out = tools.validate(&known, kube_version, validator);
            assert!(
                out.status.success(),
                "kubernetes-validate {kube_version} refuses the chart with {set}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // With no values: one replica of each, SQLite on a PersistentVolumeClaim, a
    // PodDisruptionBudget per component.
    let docs = documents(&tools.render(None, "1.37.0", &[]));
    for name in ["coffer-server", "coffer-operator"] {
        assert_eq!(named(&docs, "Deployment", name)["spec"]["replicas"], 1);
        named(&docs, "PodDisruptionBudget", name);
    }
    assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 2);
    assert_eq!(of_kind(&docs, "PersistentVolumeClaim").len(), 1);
    let server = named(&docs, "Deployment", "coffer-server");
    assert_eq!(server["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        server["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "coffer-server-data"
    );
    let image = |name: &str| {
        named(&docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        image("coffer-server"),
        format!("ghcr.io/coffer-dev/coffer-server:{version}")
    );
    assert_eq!(
        image("coffer-operator"),
        format!("ghcr.io/coffer-dev/coffer-operator:{version}")
    );
}

#[test]
fn the_tools_script_installs_the_versions_the_tests_look_for() {
    let script = std::fs::read_to_string(repo_path("tests/chart/tools.sh")).unwrap();
    assert!(script.contains(&format!("HELM_VERSION=\"{HELM_VERSION}\"")));
    let validators = VALIDATED.map(|(_, v)| v).join(" ");
    assert!(script.contains(&format!("VALIDATE_VERSIONS=({validators})")));
}

#[test]
fn the_values_schema_refuses_wrong_values_with_a_clear_message() {
    let Some(tools) = tools() else { return };
    let dir = repo_path("tests/chart/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# refused: "))
            .unwrap_or_else(|| panic!("{} starts with `# refused: <message>`", file.display()));
        let out = tools
            .helm()
            .args(["template", RELEASE])
            .arg(chart_dir())
            .arg("--values")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(expected),
            "{}: expected {expected:?}, got {stderr}",
            file.display()
        );
        checked += 1;
    }
    assert!(checked >= 8);
}

#[test]
fn the_chart_carries_the_committed_crds_byte_for_byte_and_the_crates_version() {
    for file in ["project.yaml", "environment.yaml"] {
        assert_eq!(
            std::fs::read(chart_dir().join("crds").join(file)).unwrap(),
            std::fs::read(repo_path("crds").join(file)).unwrap(),
            "charts/coffer/crds/{file} differs from crds/{file}: copy it"
        );
    }
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let server_version = std::fs::read_to_string(repo_path("api-server/Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_owned())
        .unwrap();
    assert_eq!(server_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
}

/// `rules` of the object `kind` in a YAML stream.
fn rules(documents: &[Value], kind: &str) -> Value {
    let found = of_kind(documents, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]["rules"].clone()
}

#[test]
fn the_chart_grants_the_operator_exactly_what_deploy_rbac_yaml_documents() {
    let Some(tools) = tools() else { return };
    let documented = documents(&crate::deploy::read("deploy/rbac.yaml"));
    let chart = documents(&tools.render(None, "1.37.0", &[]));
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            rules(&chart, kind),
            rules(&documented, kind),
            "the chart's {kind} and operator/deploy/rbac.yaml drifted apart"
        );
    }
    // Cluster-wide: a ClusterRoleBinding; namespaced: a RoleBinding per watched namespace.
    assert_eq!(of_kind(&chart, "ClusterRoleBinding").len(), 1);
    let namespaced = documents(&tools.render(
        None,
        "1.37.0",
        &[
            "--set",
            "operator.rbac.mode=namespaced",
            "--set",
            "operator.rbac.namespaces={apps,payments}",
        ],
    ));
    assert!(of_kind(&namespaced, "ClusterRoleBinding").is_empty());
    let bindings: BTreeSet<_> = of_kind(&namespaced, "RoleBinding")
        .iter()
        .map(|b| b["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        bindings,
        ["apps", "coffer-system", "payments"]
            .map(str::to_owned)
            .into()
    );
    let operator = named(&namespaced, "Deployment", "coffer-operator");
    let env = &operator["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({ "name": "COFFER_NAMESPACES", "value": "apps,payments" }))
    );
}

#[test]
fn the_grafana_dashboard_reads_metrics_the_components_export() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("dashboards/coffer.json")).unwrap(),
    )
    .unwrap();
    let text = dashboard.to_string();
    let server = std::fs::read_to_string(repo_path("api-server/src/metrics.rs")).unwrap();
    let operator = std::fs::read_to_string(repo_path("operator/src/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("coffer_") {
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        names.insert(name);
    }
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        let (source, base) = match name.strip_prefix("coffer_operator_") {
            Some(base) => (&operator, base),
            None => (&server, name.strip_prefix("coffer_").unwrap()),
        };
        let base = ["_total", "_bucket"]
            .iter()
            .fold(base, |b, suffix| b.strip_suffix(suffix).unwrap_or(b));
        assert!(
            source.contains(&format!("\"{base}\"")),
            "the dashboard reads {name}, which no component registers"
        );
    }
}

const TABLE_START: &str = "<!-- values table: generated from charts/coffer/values.schema.json by the chart tests; COFFER_BLESS=1 rewrites it -->";
const TABLE_END: &str = "<!-- end of the values table -->";

/// The README's values table: every value of `values.yaml` with its type, default and the
/// description of `values.schema.json`.
fn values_table() -> String {
    let values: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut table = String::from("| Value | Type | Default | Description |\n|---|---|---|---|\n");
    fn walk(path: &str, value: &serde_norway::Value, schema: &Value, table: &mut String) {
        if let (serde_norway::Value::Mapping(map), Some(properties)) =
            (value, schema["properties"].as_object())
        {
            let keys: BTreeSet<_> = map.keys().filter_map(|k| k.as_str()).collect();
            let declared: BTreeSet<_> = properties.keys().map(String::as_str).collect();
            assert_eq!(
                keys, declared,
                "values.yaml and the schema differ at {path:?}"
            );
            for (key, value) in map {
                let key = key.as_str().unwrap();
                let path = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                walk(&path, value, &properties[key], table);
            }
            return;
        }
        let description = schema["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{path} has no description in the schema"));
        let kind = match (&schema["enum"], &schema["type"]) {
            (Value::Array(choices), _) => choices
                .iter()
                .map(|c| format!("`{}`", c.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
            (_, Value::Array(types)) => types
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" or "),
            (_, t) => t.as_str().unwrap().to_owned(),
        };
        let default = serde_json::to_string(&serde_json::to_value(value).unwrap()).unwrap();
        table.push_str(&format!(
            "| `{path}` | {kind} | `{default}` | {} |\n",
            description.replace('|', "\\|")
        ));
    }
    walk("", &values, &schema, &mut table);
    table
}

#[test]
fn the_readme_values_table_is_generated_from_the_schema() {
    let readme_path = repo_path("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let start = readme
        .find(TABLE_START)
        .expect("the README has the values table's start marker")
        + TABLE_START.len();
    let end = readme
        .find(TABLE_END)
        .expect("the README has the values table's end marker");
    let expected = format!("\n{}", values_table());
    if readme[start..end] != expected {
        if std::env::var("COFFER_BLESS").as_deref() == Ok("1") {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(&readme_path, updated).unwrap();
        } else {
            panic!(
                "the README's values table is out of date: run the chart tests with COFFER_BLESS=1"
            );
        }
    }
}

/// A process killed when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `key` in Secret `namespace/name`, as the kubelet would hand it to a pod.
async fn secret_value(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Option<String> {
    let secret = Api::<Secret>::namespaced(kube.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()?;
    let bytes = secret.data?.remove(key)?.0;
    Some(String::from_utf8(bytes).unwrap())
}

/// coffer-server as the chart runs it: the settings of its ConfigMap and the keys of its
/// Secret, the certificate of its TLS Secret at the mounted paths, a temporary directory for
/// its volume, and loopback ports for the container's.
async fn server_as_installed(kube: &kube::Client, ns: &str, dir: &Path) -> (Coffer, u16) {
    let deployment = Api::<Deployment>::namespaced(kube.clone(), ns)
        .get("coffer-server")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let mut settings = BTreeMap::new();
    for source in container.env_from.as_deref().unwrap_or_default() {
        let name = &source.config_map_ref.as_ref().unwrap().name;
        let map = Api::<ConfigMap>::namespaced(kube.clone(), ns)
            .get(name)
            .await
            .unwrap();
        settings.extend(map.data.unwrap_or_default());
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let from = var
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        let value = secret_value(kube, ns, &from.name, &from.key).await.unwrap();
        settings.insert(var.name.clone(), value);
    }
    // The TLS volume's files.
    let tls = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "tls")
        .unwrap()
        .secret
        .unwrap()
        .secret_name
        .unwrap();
    for file in ["tls.crt", "tls.key"] {
        let pem = secret_value(kube, ns, &tls, file).await.unwrap();
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let ca_pem = secret_value(kube, ns, &tls, "ca.crt").await.unwrap();
    assert_eq!(settings["COFFER_ENV"], "production");
    assert_eq!(settings["COFFER_TLS_CERT"], "/etc/coffer/tls/tls.crt");
    let (port, metrics_port) = (free_port(), free_port());
    let data = dir.join("data");
    for (name, value) in [
        ("COFFER_LISTEN", format!("127.0.0.1:{port}")),
        ("COFFER_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("COFFER_DATA_DIR", data.display().to_string()),
        ("COFFER_TLS_CERT", dir.join("tls.crt").display().to_string()),
        ("COFFER_TLS_KEY", dir.join("tls.key").display().to_string()),
    ] {
        assert!(settings.insert(name.to_owned(), value).is_some(), "{name}");
    }
    // Each variable is also a flag of the same name: --listen for COFFER_LISTEN.
    let args = settings.iter().flat_map(|(name, value)| {
        let flag = name
            .strip_prefix("COFFER_")
            .unwrap()
            .to_lowercase()
            .replace('_', "-");
        [format!("--{flag}"), value.clone()]
    });
    let cli = <coffer_server::config::Cli as clap::Parser>::try_parse_from(
        std::iter::once("coffer-server".to_owned()).chain(args),
    )
    .unwrap();
    // The certificate names localhost, for `kubectl port-forward`: verified, not skipped.
    let coffer = Coffer::start_configured(
        cli.config,
        format!("https://localhost:{port}"),
        Some(ca_pem),
    )
    .await;
    (coffer, metrics_port)
}

/// The operator binary as the chart's Deployment runs it: its environment (Secrets read as the
/// kubelet would), the CA bundle of its volume, and a kubeconfig with a token of the chart's
/// ServiceAccount. It watches `watched` only and reads from `server_url` (the chart's service
/// name does not resolve here).
async fn operator_as_installed(
    env: &TestEnv,
    ns: &str,
    watched: &str,
    server_url: &str,
    dir: &Path,
) -> Process {
    let kube = env.client().unwrap();
    let deployment = Api::<Deployment>::namespaced(kube.clone(), ns)
        .get("coffer-operator")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let account = pod.service_account_name.clone().unwrap();
    let token = env.service_account_token(ns, &account).await.unwrap();
    std::fs::write(dir.join("kubeconfig"), env.kubeconfig_with_token(&token)).unwrap();
    let ca = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "ca")
        .unwrap()
        .secret
        .unwrap();
    let item = &ca.items.unwrap()[0];
    let bundle = secret_value(&kube, ns, ca.secret_name.as_deref().unwrap(), &item.key)
        .await
        .unwrap();
    std::fs::write(dir.join("ca.crt"), bundle).unwrap();

    let container = &pod.containers[0];
    let log = dir.join("operator.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_coffer-operator"));
    command
        .args(container.args.clone().unwrap())
        .env_clear()
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("operator.stderr")).unwrap());
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => Some(value.clone()),
            (None, Some(from)) if from.field_ref.is_some() => Some("coffer-operator-0".to_owned()),
            (None, Some(from)) => {
                let from = from.secret_key_ref.as_ref().unwrap();
                let value = secret_value(&kube, ns, &from.name, &from.key).await;
                assert!(
                    value.is_some() || from.optional == Some(true),
                    "{}",
                    var.name
                );
                value
            }
            (None, None) => None,
        };
        if let Some(value) = value {
            command.env(&var.name, value);
        }
    }
    command
        .env("COFFER_CA_BUNDLE", dir.join("ca.crt"))
        .env("COFFER_SERVER_URL", server_url)
        .env("COFFER_NAMESPACES", watched)
        .env("COFFER_METRICS_ADDR", format!("127.0.0.1:{}", free_port()));
    Process {
        child: command.spawn().unwrap(),
        log: dir.join("operator.stderr"),
    }
}

/// The names of the objects of `kinds` in `namespace`, as `kind/name`.
fn objects(env: &TestEnv, namespace: &str, kinds: &str) -> BTreeSet<String> {
    let out = succeed(
        env.kubectl()
            .unwrap()
            .args(["get", kinds, "-n", namespace, "-o", "name"]),
        "kubectl get",
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn helm_install_runs_both_components_upgrade_keeps_the_keys_uninstall_keeps_the_data() {
    let Some(env) = cluster() else { return };
    let Some(tools) = tools() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let watched = env.create_namespace().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // No values at all. The notes tell the next step.
    let out = succeed(
        tools
            .helm_in(env, &ns)
            .args(["install", RELEASE])
            .arg(chart_dir()),
        "helm install",
    );
    let notes = String::from_utf8(out.stdout).unwrap();
    assert!(
        notes.contains("create secret generic coffer-operator-token")
            && notes.contains("get secret coffer-server-keys"),
        "{notes}"
    );
    let installed = objects(
        env,
        &ns,
        "deployments,services,configmaps,secrets,persistentvolumeclaims,poddisruptionbudgets,serviceaccounts,roles,rolebindings,jobs",
    );
    for expected in [
        "deployment.apps/coffer-server",
        "deployment.apps/coffer-operator",
        "service/coffer-server",
        "service/coffer-server-metrics",
        "service/coffer-operator-metrics",
        "configmap/coffer-server",
        "secret/coffer-server-keys",
        "secret/coffer-server-tls",
        "persistentvolumeclaim/coffer-server-data",
        "poddisruptionbudget.policy/coffer-server",
        "poddisruptionbudget.policy/coffer-operator",
        "serviceaccount/coffer-server",
        "serviceaccount/coffer-operator",
        "role.rbac.authorization.k8s.io/coffer-operator",
        "rolebinding.rbac.authorization.k8s.io/coffer-operator",
    ] {
        assert!(
            installed.contains(expected),
            "{expected} not in {installed:?}"
        );
    }
    assert!(
        !installed.iter().any(|o| o.starts_with("job")),
        "{installed:?}"
    );
    let cluster_role = format!("{ns}-coffer-operator");
    Api::<ClusterRole>::all(kube.clone())
        .get(&cluster_role)
        .await
        .unwrap();
    let keys = |name: &'static str| {
        let kube = kube.clone();
        let ns = ns.clone();
        async move {
            Api::<Secret>::namespaced(kube, &ns)
                .get(name)
                .await
                .unwrap()
                .data
                .unwrap()
        }
    };
    let generated = keys("coffer-server-keys").await;
    let certificate = keys("coffer-server-tls").await;
    let master_key = String::from_utf8(generated["master-key"].0.clone()).unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(master_key.as_bytes())
            .unwrap()
            .len(),
        32
    );

    // coffer-server from the chart's settings, keys and certificate.
    let (coffer, metrics_port) = server_as_installed(&kube, &ns, dir.path()).await;
    coffer.project("web").await;
    coffer
        .set("web", "production", &[("DATABASE_URL", "postgres://db")])
        .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("coffer_build_info"), "{metrics}");

    // The operator's token, as the NOTES say; then the operator as the chart's ServiceAccount.
    let token = coffer.service_token("web", &["production"]).await;
    let token_secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "coffer-operator-token" }, "stringData": { "token": token },
    }))
    .unwrap();
    Api::<Secret>::namespaced(kube.clone(), &ns)
        .create(&PostParams::default(), &token_secret)
        .await
        .unwrap();
    let operator = operator_as_installed(env, &ns, &watched, &coffer.url, dir.path()).await;
    project_and_environment(&kube, &watched).await;
    let synced = tokio::time::timeout(
        TIMEOUT,
        wait_for_value(&kube, &watched, "web-prod", "DATABASE_URL", "postgres://db"),
    )
    .await;
    assert!(
        synced.is_ok(),
        "not synced; the operator logged:\n{}",
        operator.log()
    );
    // It leads, with the Lease the Role names.
    Api::<Lease>::namespaced(kube.clone(), &ns)
        .get("coffer-operator")
        .await
        .unwrap();

    // The ServiceAccount may do what the operator needs, and nothing else.
    let account = env
        .service_account_client(&ns, "coffer-operator")
        .await
        .unwrap();
    assert_forbidden(
        "list ConfigMaps",
        Api::<ConfigMap>::namespaced(account.clone(), &watched)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "list Pods",
        Api::<Pod>::namespaced(account.clone(), &watched)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "a Lease of another name",
        Api::<Lease>::namespaced(account.clone(), &ns)
            .get("someone-else")
            .await,
    );
    assert_forbidden(
        "create a Role",
        Api::<Role>::namespaced(account.clone(), &watched)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "escalate" }, "rules": [] }))
                    .unwrap(),
            )
            .await,
    );
    drop(operator);
    drop(coffer);

    // An upgrade changes a setting and keeps the generated keys and certificate.
    succeed(
        tools
            .helm_in(env, &ns)
            .args(["upgrade", RELEASE])
            .arg(chart_dir())
            .args(["--set", "server.settings.COFFER_LOG=debug"]),
        "helm upgrade",
    );
    let settings = Api::<ConfigMap>::namespaced(kube.clone(), &ns)
        .get("coffer-server")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(settings["COFFER_LOG"], "debug");
    assert_eq!(keys("coffer-server-keys").await, generated);
    assert_eq!(keys("coffer-server-tls").await, certificate);

    // Uninstalled: the components go; the CRDs, the custom resources, the synced Secret, the
    // keys and the database stay.
    succeed(
        tools.helm_in(env, &ns).args(["uninstall", RELEASE]),
        "helm uninstall",
    );
    assert!(
        Api::<Deployment>::namespaced(kube.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        Api::<ClusterRole>::all(kube.clone())
            .get_opt(&cluster_role)
            .await
            .unwrap()
            .is_none()
    );
    let remaining = objects(env, &ns, "secrets,persistentvolumeclaims");
    for kept in [
        "secret/coffer-server-keys",
        "persistentvolumeclaim/coffer-server-data",
    ] {
        assert!(remaining.contains(kept), "{kept} not in {remaining:?}");
    }
    assert_eq!(keys("coffer-server-keys").await, generated);
    let crds = objects(env, "default", "customresourcedefinitions");
    for crd in ["projects.coffer.dev", "environments.coffer.dev"] {
        assert!(
            crds.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{crd}"
            )),
            "{crds:?}"
        );
    }
    Api::<Project>::namespaced(kube.clone(), &watched)
        .get("web")
        .await
        .unwrap();
    Api::<Environment>::namespaced(kube.clone(), &watched)
        .get("web-prod")
        .await
        .unwrap();
    wait_for_value(&kube, &watched, "web-prod", "DATABASE_URL", "postgres://db").await;
}

#[tokio::test]
async fn in_namespaced_mode_the_chart_grants_the_operator_its_namespaces_only() {
    let Some(env) = cluster() else { return };
    let Some(tools) = tools() else { return };
    let kube = env.client().unwrap();
    let ns = env.create_namespace().await.unwrap();
    let watched = env.create_namespace().await.unwrap();
    let elsewhere = env.create_namespace().await.unwrap();
    succeed(
        tools
            .helm_in(env, &ns)
            .args(["install", RELEASE])
            .arg(chart_dir())
            .args([
                "--set",
                "operator.rbac.mode=namespaced",
                "--set",
                &format!("operator.rbac.namespaces={{{watched}}}"),
            ]),
        "helm install",
    );
    let account = env
        .service_account_client(&ns, "coffer-operator")
        .await
        .unwrap();
    Api::<Secret>::namespaced(account.clone(), &watched)
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    Api::<Environment>::namespaced(account.clone(), &watched)
        .list(&ListParams::default())
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "other" }, "stringData": { "x": "y" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(kube.clone(), &elsewhere)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_forbidden(
        "read a Secret of an unwatched namespace",
        Api::<Secret>::namespaced(account.clone(), &elsewhere)
            .get("other")
            .await,
    );
    assert_forbidden(
        "list Environments everywhere",
        Api::<Environment>::all(account.clone())
            .list(&ListParams::default())
            .await,
    );
    // Cluster-wide, the operator may read every Secret of the cluster; here, not even
    // coffer-server's keys beside it.
    assert_forbidden(
        "read coffer-server's keys",
        Api::<Secret>::namespaced(account.clone(), &ns)
            .get("coffer-server-keys")
            .await
            .map(|_| "a Secret"),
    );
    succeed(
        tools.helm_in(env, &ns).args(["uninstall", RELEASE]),
        "helm uninstall",
    );
}
