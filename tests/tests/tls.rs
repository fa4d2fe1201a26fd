//! TLS and mutual TLS on a real coordinator (certificates made here with rcgen, none
//! committed): a client that trusts the coordinator's CA is served; one that trusts another
//! CA, or speaks plain text, is refused; with a client CA, only callers with a certificate
//! that CA signed get through, as the name and role (OU) the certificate gives, and a
//! worker with one runs a job to success. The HTTP
//! listener (`/metrics`, the dashboard) follows the same rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::store::MemoryStore;
use feral_coordinator::Access;
use feral_proto::credentials::{client_tls, endpoint, BearerToken};
use feral_proto::v1 as pb;
use feral_proto::v1::job_service_client::JobServiceClient;
use feral_tests::scripted::ScriptedRunner;
use feral_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, and certificates it signs, written as PEM files under `dir`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem())?;
        Ok(Self { issuer, dir: dir.to_path_buf(), name: name.to_owned() })
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `names` (DNS names or IP addresses): its (certificate, key) files.
    fn sign(&self, file: &str, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.sign_as(file, names, None)
    }

    /// [`sign`](Self::sign), with `role` as the subject's organisational unit (what a
    /// coordinator with mutual TLS and no tokens reads as the caller's role).
    fn sign_as(&self, file: &str, names: &[&str], role: Option<&str>) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if let Some(role) = role {
            params.distinguished_name.push(DnType::OrganizationalUnitName, role);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_file, key_file) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok((cert_file, key_file))
    }
}

async fn coordinator(root: &Path, ca: &Ca, client_ca: Option<&Path>) -> anyhow::Result<RunningCoordinator> {
    let (cert, key) = ca.sign("coordinator", &["localhost", "127.0.0.1"])?;
    let access = Access { tls: Some(Access::tls_from_files(&cert, &key, client_ca)?), ..Access::default() };
    RunningCoordinator::start_with(test_settings(root), access, Arc::new(MemoryStore::default()), SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Lists jobs at `url` with these client TLS files: whether the call was served.
async fn served(url: &str, ca: Option<&Path>, identity: Option<&(PathBuf, PathBuf)>) -> anyhow::Result<bool> {
    let tls = client_tls(ca, identity.map(|i| i.0.as_path()), identity.map(|i| i.1.as_path()))?;
    let endpoint = endpoint(url, tls.as_ref(), Duration::from_secs(5)).map_err(anyhow::Error::msg)?;
    let Ok(channel) = endpoint.connect().await else { return Ok(false) };
    Ok(JobServiceClient::new(channel).list_jobs(pb::ListJobsRequest::default()).await.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_that_trust_the_coordinators_ca_are_served() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (ca, other) = (Ca::new(dir.path(), "feral")?, Ca::new(dir.path(), "other")?);
    let coordinator = coordinator(dir.path(), &ca, None).await?;
    let https = format!("https://{}", coordinator.address);
    assert!(served(&https, Some(&ca.ca_file()), None).await?, "a client trusting the CA is served");
    assert!(!served(&https, Some(&other.ca_file()), None).await?, "a client trusting another CA is refused");
    assert!(!served(&coordinator.url(), None, None).await?, "plain text is refused");
    let error = endpoint(&https, None, Duration::from_secs(1)).expect_err("https without a CA").to_string();
    assert!(error.contains("--tls-ca"), "{error}");
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_certified_callers_get_through_and_a_certified_worker_trains() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (ca, other) = (Ca::new(dir.path(), "feral")?, Ca::new(dir.path(), "other")?);
    let coordinator = coordinator(dir.path(), &ca, Some(&ca.ca_file())).await?;
    let https = format!("https://{}", coordinator.address);
    let (worker_identity, stranger) = (ca.sign_as("w1", &["w1"], Some("worker"))?, other.sign_as("stranger", &["stranger"], Some("submitter"))?);
    let submitter = ca.sign_as("carol", &["carol"], Some("submitter"))?;
    assert!(!served(&https, Some(&ca.ca_file()), None).await?, "no client certificate: refused");
    assert!(!served(&https, Some(&ca.ca_file()), Some(&stranger)).await?, "a certificate of another CA: refused");
    assert!(served(&https, Some(&ca.ca_file()), Some(&submitter)).await?, "a submitter's certificate the CA signed: served");

    // The certificate names the caller and its role: a worker's may not call the job API,
    // nor speak for another worker; one without a role is refused with what it lacks.
    let connect = |identity: &(PathBuf, PathBuf)| {
        let tls = client_tls(Some(&ca.ca_file()), Some(&identity.0), Some(&identity.1));
        let https = https.clone();
        async move { anyhow::Ok(endpoint(&https, tls?.as_ref(), Duration::from_secs(5)).map_err(anyhow::Error::msg)?.connect().await?) }
    };
    let refused = JobServiceClient::new(connect(&worker_identity).await?)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect_err("a worker certificate on the job API");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("`w1` has role worker"), "{}", refused.message());
    let mut as_w1 = feral_proto::v1::worker_service_client::WorkerServiceClient::new(connect(&worker_identity).await?);
    let slot = pb::Slot { device: "cpu".into(), name: "cpu".into() };
    let register = |id: &str| pb::RegisterRequest { worker_id: id.into(), hostname: "h".into(), slots: vec![slot.clone()] };
    let refused = as_w1.register(register("w2")).await.expect_err("w1's certificate registering as w2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("may not act as worker `w2`"), "{}", refused.message());
    let roleless = ca.sign("nobody", &["nobody"])?;
    let refused = JobServiceClient::new(connect(&roleless).await?).list_jobs(pb::ListJobsRequest::default()).await.expect_err("no role");
    assert!(refused.message().contains("needs OU=submitter, OU=worker or OU=admin"), "{}", refused.message());

    let tls = client_tls(Some(&ca.ca_file()), Some(&worker_identity.0), Some(&worker_identity.1))?;
    let worker = RunningWorker::start_with(&https, "w1", Arc::new(ScriptedRunner::fast(0)), BearerToken::none(), tls);
    let dataset = synthetic_dataset(&dir.path().join("data"), 200)?;
    let mut jobs = JobServiceClient::new(connect(&submitter).await?);
    let job = submit(&mut jobs, job_spec(&dataset, 2)).await?;
    assert_eq!(job.owner, "carol", "the job belongs to the certificate's name");
    let done = wait_for_state(&jobs, &job.id, &[pb::JobState::Succeeded, pb::JobState::Failed], Duration::from_secs(60)).await?;
    assert_eq!(done.state, pb::JobState::Succeeded as i32, "{}", done.state_reason);
    worker.stop().await?;
    coordinator.stop().await
}

/// GETs `path` from the HTTPS listener at `address` trusting `ca`, with an optional client
/// certificate: the status, or why no answer came.
fn https_get(address: SocketAddr, path: &str, ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Result<u16, String> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let pem = |path: &Path| std::fs::read(path).map_err(|e| e.to_string());
    let ca = Certificate::from_pem(&pem(ca)?).map_err(|e| e.to_string())?;
    let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
    if let Some((cert, key)) = identity {
        let cert = Certificate::from_pem(&pem(cert)?).map_err(|e| e.to_string())?;
        let key = PrivateKey::from_pem(&pem(key)?).map_err(|e| e.to_string())?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    let agent =
        ureq::Agent::config_builder().tls_config(tls.build()).http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().new_agent();
    let response = agent.get(format!("https://127.0.0.1:{}{path}", address.port())).call().map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_dashboard_are_served_over_tls_only() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (ca, other) = (Ca::new(dir.path(), "feral")?, Ca::new(dir.path(), "other")?);
    let (cert, key) = ca.sign("coordinator", &["localhost", "127.0.0.1"])?;
    let (member, stranger) = (ca.sign("prometheus", &["prometheus"])?, other.sign("stranger", &["stranger"])?);

    let access = Access { tls: Some(Access::tls_from_files(&cert, &key, None)?), ..Access::default() };
    let coordinator = RunningCoordinator::observed_with(dir.path(), access).await?;
    let http = coordinator.http.expect("an observed coordinator");
    let (ca_file, other_file) = (ca.ca_file(), other.ca_file());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for path in ["/metrics", "/", "/api/jobs"] {
            assert_eq!(https_get(http, path, &ca_file, None), Ok(200), "{path} over TLS");
        }
        assert!(https_get(http, "/metrics", &other_file, None).is_err(), "a client trusting another CA is refused");
        let plain = ureq::get(format!("http://{http}/metrics")).config().timeout_global(Some(Duration::from_secs(10))).build().call();
        assert!(plain.is_err(), "plain HTTP is not served: {:?}", plain.map(|r| r.status()));
        Ok(())
    })
    .await??;
    coordinator.stop().await?;

    // Mutual: only a client certificate the client CA signed gets an answer.
    let access = Access { tls: Some(Access::tls_from_files(&cert, &key, Some(&ca.ca_file()))?), ..Access::default() };
    let coordinator = RunningCoordinator::observed_with(dir.path(), access).await?;
    let http = coordinator.http.expect("an observed coordinator");
    let ca_file = ca.ca_file();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        assert!(https_get(http, "/metrics", &ca_file, None).is_err(), "no client certificate");
        assert!(https_get(http, "/metrics", &ca_file, Some(&stranger)).is_err(), "another CA's client certificate");
        assert_eq!(https_get(http, "/metrics", &ca_file, Some(&member)), Ok(200), "a certified client");
        Ok(())
    })
    .await??;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_metrics_are_served_over_tls_when_it_has_a_certificate() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (ca, other) = (Ca::new(dir.path(), "feral")?, Ca::new(dir.path(), "other")?);
    let (cert, key) = ca.sign("node", &["localhost", "127.0.0.1"])?;
    let config = feral_proto::https::server_config(&std::fs::read(&cert)?, &std::fs::read(&key)?, None)?;
    let metrics = feral_worker::metrics::WorkerMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(feral_worker::metrics::serve(listener, Default::default(), Some(config), Arc::new(registry), async {
        let _ = stopped.await;
    }));
    let (ca_file, other_file) = (ca.ca_file(), other.ca_file());
    tokio::task::spawn_blocking(move || {
        assert_eq!(https_get(address, "/metrics", &ca_file, None), Ok(200), "a client trusting the CA");
        assert!(https_get(address, "/metrics", &other_file, None).is_err(), "a client trusting another CA");
        let plain = ureq::get(format!("http://{address}/metrics")).config().timeout_global(Some(Duration::from_secs(10))).build().call();
        assert!(plain.is_err(), "plain HTTP is not served");
    })
    .await?;
    let _ = stop.send(());
    serving.await??;
    Ok(())
}

/// The CLI says what a TLS mix-up is: plain text to a TLS port, TLS to a plain port, no
/// client certificate for a coordinator with mutual TLS (the bare errors were "h2 protocol
/// error" and "transport error").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mix_ups_are_named_with_what_to_do() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let ca = Ca::new(dir.path(), "feral")?;
    let mutual = coordinator(dir.path(), &ca, Some(&ca.ca_file())).await?;
    let plain = RunningCoordinator::in_memory(dir.path()).await?;
    let feral = std::env::current_exe()?.parent().and_then(|deps| deps.parent()).map(|release| release.join("feral")).expect("the target directory");
    anyhow::ensure!(feral.exists(), "{} is missing: cargo build --release -p feral-cli", feral.display());
    let ca_file = ca.ca_file().display().to_string();
    let cases = [
        (format!("http://{}", mutual.address), vec![], "use an https:// address"),
        (format!("https://{}", plain.address), vec!["--tls-ca", &ca_file], "does not speak TLS: use an http:// address"),
        (format!("https://{}", mutual.address), vec!["--tls-ca", &ca_file], "give --tls-cert and --tls-key"),
    ];
    for (url, extra, expected) in cases {
        let output = tokio::process::Command::new(&feral).arg("--coordinator").arg(&url).args(&extra).arg("status").output().await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{url}: {stderr}");
    }
    mutual.stop().await?;
    plain.stop().await
}
