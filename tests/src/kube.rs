//! The Kubernetes side of the consumer tests, against a real API server (the local one of
//! `scripts/kube/control-plane.sh`, or any other): a fresh namespace per test, the
//! consumer's ServiceAccount, Role and RoleBinding rendered from the Helm chart and applied
//! with kubectl, a kubeconfig that authenticates as that ServiceAccount (so the consumer
//! runs with exactly the chart's RBAC), and the Pods, EndpointSlices and Lease the tests
//! create and read (there are no controllers: the tests play the kubelet and the
//! EndpointSlice controller).
//!
//! Where things are (all from the environment, see docs/dev/control-plane.md):
//! - `HERMES_TEST_KUBECONFIG`, else `KUBECONFIG`: an admin kubeconfig of the API server
//!   (`eval "$(scripts/kube/control-plane.sh env)"` sets `KUBECONFIG`). Missing or
//!   unreachable: the tests fail saying how to start it.
//! - `HERMES_KUBECTL`, else `kubectl` on `PATH` (`control-plane.sh env` sets it).
//! - `HERMES_HELM`, else `scripts/kube/helm.sh` (builds helm once, then reuses it).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

/// How to get an API server, said by every failure to find one.
pub const HOWTO: &str = "start the local API server and export its kubeconfig: \
    `scripts/kube/control-plane.sh start && eval \"$(scripts/kube/control-plane.sh env)\" \
    && export KUBECONFIG HERMES_KUBECTL` (or set HERMES_TEST_KUBECONFIG to an admin \
    kubeconfig); scripts/test.sh does this";

/// The chart's release name in the tests.
pub const RELEASE: &str = "hermes";

/// Path of the admin kubeconfig: `HERMES_TEST_KUBECONFIG`, else `KUBECONFIG`; panics with
/// [`HOWTO`] when neither names an existing file.
pub fn admin_kubeconfig() -> PathBuf {
    let path = ["HERMES_TEST_KUBECONFIG", "KUBECONFIG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            panic!("no Kubernetes API server: neither HERMES_TEST_KUBECONFIG nor KUBECONFIG is set; {HOWTO}")
        });
    // KUBECONFIG may be a list; the tests use its first file.
    let first = std::env::split_paths(&path)
        .next()
        .unwrap_or_else(|| PathBuf::from(&path));
    assert!(
        first.is_file(),
        "the kubeconfig {} does not exist; {HOWTO}",
        first.display()
    );
    first
}

fn kubectl() -> PathBuf {
    std::env::var("HERMES_KUBECTL")
        .ok()
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The helm binary: `HERMES_HELM`, else the one `scripts/kube/helm.sh` builds or reuses
/// (once per test process: the tests run in parallel).
fn helm() -> PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(path) = std::env::var("HERMES_HELM").ok().filter(|v| !v.is_empty()) {
            return path.into();
        }
        let script = repo_root().join("scripts/kube/helm.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("build")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{} does not run: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed (set HERMES_HELM to a helm binary)",
            script.display()
        );
        let path = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert!(
            Path::new(&path).is_file(),
            "{} printed no helm path",
            script.display()
        );
        path.into()
    })
    .clone()
}

/// Runs `program args`, feeding `stdin`; panics with its stderr if it fails.
fn run(program: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not run ({e}); set HERMES_KUBECTL / HERMES_HELM, or {HOWTO}",
                program.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{} {} failed: {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A DNS-1123 label no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    crate::unique(prefix).replace('_', "-")
}

/// How an EndpointSlice shows a gateway pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `ready: true`.
    Ready,
    /// `ready: false, serving: true, terminating: true`: the pod is shutting down.
    Terminating,
    /// `ready: false`: not (yet) ready.
    NotReady,
}

/// What the chart gives the consumer, read back from the objects it rendered.
#[derive(Debug, Clone)]
pub struct ConsumerAccess {
    /// A kubeconfig that authenticates as the chart's ServiceAccount.
    pub kubeconfig: PathBuf,
    pub service_account: String,
    /// The only Lease the Role lets the consumer read and update.
    pub lease_name: String,
    /// `HERMES_KUBE_GATEWAY_SERVICE` of the chart's ConfigMap.
    pub gateway_service: String,
    /// `HERMES_KUBE_GATEWAY_SELECTOR` of the chart's ConfigMap.
    pub gateway_selector: String,
}

impl ConsumerAccess {
    /// The labels a gateway pod carries: those of the selector (`k=v,k=v`).
    pub fn gateway_labels(&self) -> BTreeMap<String, String> {
        self.gateway_selector
            .split(',')
            .map(|term| {
                let (k, v) = term
                    .split_once('=')
                    .unwrap_or_else(|| panic!("selector term `{term}` is not `key=value`"));
                (
                    k.trim().to_owned(),
                    v.trim_start_matches('=').trim().to_owned(),
                )
            })
            .collect()
    }
}

/// A namespace of the API server, made for one test (never reused: without a namespace
/// controller a deleted namespace stays `Terminating`, so it is left in place).
pub struct KubeNamespace {
    pub name: String,
    pub client: Client,
    admin: PathBuf,
    kubeconfig: Kubeconfig,
    /// ServiceAccount kubeconfigs written (they hold a token): removed on drop.
    written: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for KubeNamespace {
    fn drop(&mut self) {
        for path in self.written.lock().map(|w| w.clone()).unwrap_or_default() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl KubeNamespace {
    /// Connects as the admin and creates a fresh namespace `<prefix>-<unique>`.
    pub async fn create(prefix: &str) -> Self {
        let admin = admin_kubeconfig();
        let kubeconfig = Kubeconfig::read_from(&admin)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", admin.display()));
        let config =
            Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("cannot use {}: {e}", admin.display()));
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).expect("a Kubernetes client");
        if let Err(e) = client.apiserver_version().await {
            panic!(
                "the API server {server} (from {}) does not answer ({e}); {HOWTO}",
                admin.display()
            );
        }
        let name = unique_name(prefix);
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        Self {
            name,
            client,
            admin,
            kubeconfig,
            written: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Renders the chart's ServiceAccount, Role, RoleBinding and ConfigMap for this
    /// namespace (`helm template`), applies them as the admin (`kubectl apply`), and writes
    /// a kubeconfig that authenticates as the ServiceAccount (a TokenRequest). The consumer
    /// run with it has exactly the chart's permissions.
    pub async fn install_consumer_access(&self) -> ConsumerAccess {
        let chart = repo_root().join("charts/hermes");
        let rendered = run(
            &helm(),
            &[
                "template",
                RELEASE,
                &chart.to_string_lossy(),
                "--namespace",
                &self.name,
                // The chart has no default broker URL (none can work); these objects do
                // not use it.
                "--set",
                "amqp.url=amqp://hermes:unused@rabbitmq:5672/%2f",
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/configmap.yaml",
            ],
            b"",
        );
        let applied = run(
            &kubectl(),
            &[
                "--kubeconfig",
                &self.admin.to_string_lossy(),
                "apply",
                "--namespace",
                &self.name,
                "--output",
                "json",
                "--filename",
                "-",
            ],
            &rendered,
        );
        let applied: Value = serde_json::from_slice(&applied).expect("kubectl prints JSON");
        let items = match applied["kind"].as_str() {
            Some("List") => applied["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![applied],
        };
        let of_kind =
            |kind: &str| -> Vec<&Value> { items.iter().filter(|i| i["kind"] == kind).collect() };
        let kinds: Vec<_> = items.iter().map(|i| i["kind"].clone()).collect();
        let [sa] = of_kind("ServiceAccount")[..] else {
            panic!("the chart rendered no single ServiceAccount: {kinds:?}")
        };
        let [role] = of_kind("Role")[..] else {
            panic!("the chart rendered no single Role: {kinds:?}")
        };
        let [_binding] = of_kind("RoleBinding")[..] else {
            panic!("the chart rendered no single RoleBinding: {kinds:?}")
        };
        let service_account = sa["metadata"]["name"].as_str().expect("SA name").to_owned();
        let lease_names: Vec<&str> = role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!("leases")))
            })
            .flat_map(|r| r["resourceNames"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        let [lease_name] = lease_names[..] else {
            panic!("the Role names not exactly one Lease: {lease_names:?}")
        };
        let config = of_kind("ConfigMap")
            .into_iter()
            .find(|c| c["data"]["HERMES_KUBE_GATEWAY_SERVICE"].is_string())
            .unwrap_or_else(|| panic!("no ConfigMap with HERMES_KUBE_GATEWAY_SERVICE: {kinds:?}"));
        let setting = |key: &str| {
            config["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("the chart's ConfigMap has no {key}"))
                .to_owned()
        };
        assert_eq!(
            setting("HERMES_KUBE_LEASE_NAME"),
            lease_name,
            "the consumer's Lease is the one its Role names"
        );
        let access = ConsumerAccess {
            kubeconfig: self.service_account_kubeconfig(&service_account).await,
            service_account,
            lease_name: lease_name.to_owned(),
            gateway_service: setting("HERMES_KUBE_GATEWAY_SERVICE"),
            gateway_selector: setting("HERMES_KUBE_GATEWAY_SELECTOR"),
        };
        // The consumer gets 403 for anything the Role does not grant: the chart's Role is
        // what is tested, not an admin's rights.
        let sa_client = client_of(&access.kubeconfig).await;
        let forbidden =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(sa_client, &self.name)
                .list(&Default::default())
                .await;
        assert!(
            matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
            "the ServiceAccount must not be an admin: {forbidden:?}"
        );
        access
    }

    /// Writes a kubeconfig for this API server that authenticates as ServiceAccount `sa`
    /// (a one-hour token from the TokenRequest API).
    async fn service_account_kubeconfig(&self, sa: &str) -> PathBuf {
        let request: TokenRequest =
            serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
                .expect("token request");
        let token = self
            .api::<ServiceAccount>()
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {}/{sa}: {e}", self.name))
            .status
            .expect("a token")
            .token;
        let context_name = self
            .kubeconfig
            .current_context
            .clone()
            .or_else(|| self.kubeconfig.contexts.first().map(|c| c.name.clone()))
            .expect("the admin kubeconfig has a context");
        let cluster_name = self
            .kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
            .expect("the current context names a cluster");
        let cluster = self
            .kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.clone())
            .expect("the cluster of the current context");
        let ca =
            match (
                &cluster.certificate_authority_data,
                &cluster.certificate_authority,
            ) {
                (Some(data), _) => Some(data.clone()),
                (None, Some(file)) => Some(base64::engine::general_purpose::STANDARD.encode(
                    std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {file}: {e}")),
                )),
                (None, None) => None,
            };
        let mut cluster_json = json!({"server": cluster.server.expect("the cluster's server")});
        if let Some(ca) = ca {
            cluster_json["certificate-authority-data"] = json!(ca);
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            cluster_json["insecure-skip-tls-verify"] = json!(true);
        }
        // JSON is YAML: kube's and kubectl's parsers read it.
        let file = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster_json}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": "test", "user": sa, "namespace": self.name}}],
            "current-context": sa,
        });
        let path = std::env::temp_dir().join(format!("hermes-e2e-{}-{sa}.kubeconfig", self.name));
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("json"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        if let Ok(mut written) = self.written.lock() {
            written.push(path.clone());
        }
        path
    }

    /// Creates a gateway pod `name` with the labels of the chart's gateway selector. It stays
    /// `Pending` (no scheduler, no kubelet); the consumer only needs it to exist.
    pub async fn create_gateway_pod(&self, access: &ConsumerAccess, name: &str) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": access.gateway_labels()},
            "spec": {"containers": [{"name": "gateway", "image": "hermes:e2e"}]},
        }))
        .expect("pod");
        self.api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("cannot create pod {name}: {e}"));
    }

    /// Deletes a pod (an unscheduled pod goes at once: no kubelet has to confirm).
    pub async fn delete_pod(&self, name: &str) {
        self.api::<Pod>()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("cannot delete pod {name}: {e}"));
        assert!(
            self.api::<Pod>()
                .get_opt(name)
                .await
                .expect("get pod")
                .is_none(),
            "pod {name} is gone"
        );
    }

    /// Creates or replaces the EndpointSlice of one gateway pod (what the EndpointSlice
    /// controller maintains for the internal Service) pointing at `internal_url`
    /// (`http://<ip>:<port>`, a gateway's internal listener): one slice per gateway, since
    /// each test gateway listens on its own port. The API server refuses loopback addresses
    /// in slices, so the gateway must listen on [`node_ip`].
    pub async fn put_gateway_slice(
        &self,
        access: &ConsumerAccess,
        gateway_id: &str,
        internal_url: &str,
        state: Endpoint,
    ) {
        let authority = internal_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("no port in {internal_url}"));
        let port: u16 = port
            .parse()
            .unwrap_or_else(|_| panic!("no port in {internal_url}"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address_type = match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => "IPv4",
            Ok(std::net::IpAddr::V6(_)) => "IPv6",
            Err(_) => "FQDN",
        };
        let (ready, serving, terminating) = match state {
            Endpoint::Ready => (true, true, false),
            Endpoint::Terminating => (false, true, true),
            Endpoint::NotReady => (false, false, false),
        };
        let name = format!("{}-{gateway_id}", access.gateway_service);
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/service-name": access.gateway_service,
                    "endpointslice.kubernetes.io/managed-by": "hermes-e2e",
                },
            },
            "addressType": address_type,
            "ports": [{"name": "internal", "port": port, "protocol": "TCP"}],
            "endpoints": [{
                "addresses": [host],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": self.name, "name": gateway_id},
            }],
        });
        self.api::<EndpointSlice>()
            .patch(
                &name,
                &PatchParams::apply("hermes-e2e").force(),
                &Patch::Apply(slice),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot apply EndpointSlice {name}: {e}"));
    }

    /// The Lease's `holderIdentity` (`None`: no Lease, or released).
    pub async fn lease_holder(&self, lease: &str) -> Option<String> {
        self.api::<Lease>()
            .get_opt(lease)
            .await
            .unwrap_or_else(|e| panic!("cannot read Lease {lease}: {e}"))
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }

    /// Environment of a consumer with Kubernetes awareness in this namespace, as `identity`,
    /// authenticated as the chart's ServiceAccount.
    pub fn consumer_env(&self, access: &ConsumerAccess, identity: &str) -> Vec<(String, String)> {
        vec![
            (
                "KUBECONFIG".into(),
                access.kubeconfig.to_string_lossy().into_owned(),
            ),
            (
                "HERMES_KUBE_GATEWAY_SERVICE".into(),
                access.gateway_service.clone(),
            ),
            (
                "HERMES_KUBE_GATEWAY_SELECTOR".into(),
                access.gateway_selector.clone(),
            ),
            ("HERMES_KUBE_NAMESPACE".into(), self.name.clone()),
            ("HERMES_KUBE_IDENTITY".into(), identity.into()),
            ("HERMES_KUBE_LEASE_NAME".into(), access.lease_name.clone()),
        ]
    }
}

/// A non-loopback IPv4 address of this machine (`HERMES_TEST_NODE_IP`, else the first local
/// address in `/proc/net/fib_trie`): what a test gateway listens on when an EndpointSlice
/// must point at it, since the API server refuses loopback addresses in slices (and
/// `*.localhost` names do not resolve through glibc).
pub fn node_ip() -> std::net::Ipv4Addr {
    if let Some(ip) = std::env::var("HERMES_TEST_NODE_IP")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return ip
            .parse()
            .unwrap_or_else(|e| panic!("HERMES_TEST_NODE_IP={ip}: {e}"));
    }
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(ip) = line.strip_prefix("|-- ") {
            last = ip.parse::<std::net::Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = last
            && !ip.is_loopback()
            && !ip.is_link_local()
            && !ip.is_unspecified()
        {
            return ip;
        }
    }
    panic!(
        "this machine has no non-loopback IPv4 address for the gateways to listen on (EndpointSlices \
         may not point at 127.0.0.0/8); set HERMES_TEST_NODE_IP"
    )
}

/// A client from a kubeconfig file.
async fn client_of(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot use {}: {e}", path.display()));
    Client::try_from(config).expect("a Kubernetes client")
}
