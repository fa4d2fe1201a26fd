//! `feral` against a coordinator with tokens: refused with the reason without a token or
//! with a worker's, and served with a submitter token from `--token-file` or `FERAL_TOKEN`.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use feral_coordinator::auth::Tokens;
use feral_coordinator::control::Settings;
use feral_coordinator::store::MemoryStore;
use feral_coordinator::Access;

const TOKENS: &str = "version = 1\n\
[[token]]\nname = \"alice\"\nrole = \"submitter\"\nsecret = \"alice-0123456789abcdef\"\n\
[[token]]\nname = \"w1\"\nrole = \"worker\"\nsecret = \"w1-0123456789abcdef\"\n";

fn feral(url: &str, args: &[&str], token_env: Option<&str>) -> anyhow::Result<Output> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_feral"));
    command.arg("--coordinator").arg(url).args(args).env_remove("FERAL_TOKEN").env_remove("FERAL_TOKEN_FILE");
    if let Some(token) = token_env {
        command.env("FERAL_TOKEN", token);
    }
    Ok(command.output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token_and_says_why_a_call_was_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let settings = Settings { artifact_root: dir.path().join("artifacts"), heartbeat_interval_ms: 100, lease_ttl_ms: 1500, deadlines: Default::default() };
    let access = Access { tokens: Some(Arc::new(Tokens::parse(TOKENS).map_err(anyhow::Error::msg)?)), ..Access::default() };
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(feral_coordinator::serve(settings, access, listener, Arc::new(MemoryStore::default()), async {
        let _ = stopped.await;
    }));
    let token_file = dir.path().join("alice.token");
    std::fs::write(&token_file, "alice-0123456789abcdef\n")?;
    let token_path = token_file.to_str().expect("utf-8 path").to_owned();

    let url2 = url.clone();
    let results = tokio::task::spawn_blocking(move || -> anyhow::Result<[Output; 4]> {
        Ok([
            feral(&url2, &["workers"], None)?,
            feral(&url2, &["workers"], Some("w1-0123456789abcdef"))?,
            feral(&url2, &["--token-file", &token_path, "workers"], None)?,
            feral(&url2, &["status"], Some("alice-0123456789abcdef"))?,
        ])
    })
    .await??;
    let [none, worker, from_file, from_env] = results;
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!none.status.success() && stderr(&none).contains("needs a bearer token"), "{}", stderr(&none));
    assert!(!worker.status.success() && stderr(&worker).contains("`w1` has role worker"), "{}", stderr(&worker));
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert!(from_env.status.success(), "{}", stderr(&from_env));

    let _ = shutdown.send(());
    tokio::time::timeout(Duration::from_secs(10), served).await???;
    Ok(())
}
