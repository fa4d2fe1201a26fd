//! The commands that talk to a running coordinator: `submit`, `status`, `watch`, `cancel`,
//! `resume` and `workers`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use feral_common::text::printable;
use feral_common::time::now_ms;
use feral_proto::v1 as pb;

use crate::client::{connect, rpc_error, Client, Target};
use crate::render;
use crate::watch::watch_job;

/// `feral submit JOB.toml [--watch]`.
pub async fn submit(url: &Target, spec_path: &Path, then_watch: bool) -> anyhow::Result<ExitCode> {
    let spec_toml = tokio::fs::read_to_string(spec_path).await.with_context(|| format!("cannot read job spec {}", spec_path.display()))?;
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let job = submit_spec(url, absolute_paths(spec_toml, &cwd)).await?;
    println!("submitted job {}", printable(&job.id));
    if !then_watch {
        return Ok(ExitCode::SUCCESS);
    }
    watch(url, &job.id).await
}

/// The spec's paths (`dataset`, `artifacts`, `[model] init`) made absolute against `cwd`,
/// where the user typed them: a worker would resolve a relative one against its own working
/// directory, so the coordinator refuses them. A spec with none, or one that does not
/// parse (the coordinator names what is wrong), is sent as written.
fn absolute_paths(spec_toml: String, cwd: &Path) -> String {
    let Ok(mut table) = spec_toml.parse::<toml::Table>() else { return spec_toml };
    let mut changed = false;
    let mut absolute = |value: Option<&mut toml::Value>| {
        if let Some(toml::Value::String(path)) = value {
            if !path.is_empty() && Path::new(path.as_str()).is_relative() {
                *path = cwd.join(path.as_str()).display().to_string();
                changed = true;
            }
        }
    };
    absolute(table.get_mut("dataset"));
    absolute(table.get_mut("artifacts"));
    absolute(table.get_mut("model").and_then(|m| m.get_mut("init")));
    if !changed {
        return spec_toml;
    }
    toml::to_string(&table).unwrap_or(spec_toml)
}

/// Sends a spec and returns the queued job.
pub async fn submit_spec(url: &Target, spec_toml: String) -> anyhow::Result<pb::Job> {
    let mut client = connect(url).await?;
    let response = client.submit_job(pb::SubmitJobRequest { spec_toml }).await.map_err(rpc_error)?;
    response.into_inner().job.context("the coordinator accepted the job but did not return it")
}

/// `feral status [JOB]`.
pub async fn status(url: &Target, job_id: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    match job_id {
        Some(job_id) => {
            let job = client.get_job(pb::GetJobRequest { job_id: job_id.to_owned() }).await.map_err(rpc_error)?;
            if let Some(age) = feral_proto::leader::view_age(job.metadata()) {
                eprintln!("note: no coordinator leads now; this is a standby's view of the store from {:.1} s ago", age.as_secs_f64());
            }
            print!("{}", render::job_details(job.get_ref(), now_ms()));
        }
        None => {
            print!("{}", render::jobs_table(&all_jobs(&mut client).await?, now_ms()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `feral watch JOB`: exits 0 only when the job succeeded.
pub async fn watch(url: &Target, job_id: &str) -> anyhow::Result<ExitCode> {
    let job = watch_job(url, job_id).await?;
    Ok(report_final(&job))
}

/// Prints the summary of a job in its final state and returns the matching exit code.
pub fn report_final(job: &pb::Job) -> ExitCode {
    println!();
    print!("{}", render::job_details(job, now_ms()));
    match job.state() {
        pb::JobState::Succeeded => ExitCode::SUCCESS,
        state => {
            let reason = if job.state_reason.is_empty() { "no reason given" } else { job.state_reason.as_str() };
            eprintln!("error: job {} {}: {}", printable(&job.id), render::job_state_name(state), printable(reason));
            ExitCode::FAILURE
        }
    }
}

/// `feral cancel JOB`.
pub async fn cancel(url: &Target, job_id: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    let job = client.cancel_job(pb::CancelJobRequest { job_id: job_id.to_owned() }).await.map_err(rpc_error)?;
    let job = job.into_inner();
    println!("job {}: {}", printable(&job.id), render::job_state_name(job.state()));
    Ok(ExitCode::SUCCESS)
}

/// `feral resume JOB`.
pub async fn resume(url: &Target, job_id: &str) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    let job = client.resume_job(pb::ResumeJobRequest { job_id: job_id.to_owned() }).await.map_err(rpc_error)?;
    let job = job.into_inner();
    let from = job.epochs.iter().filter(|e| e.round == job.round).map(|e| e.epoch).max();
    let checkpoint = from.map_or(String::new(), |epoch| format!(" from round {} epoch {epoch}", job.round));
    println!("job {}: {}{checkpoint}", printable(&job.id), render::job_state_name(job.state()));
    Ok(ExitCode::SUCCESS)
}

/// `feral workers`.
pub async fn workers(url: &Target) -> anyhow::Result<ExitCode> {
    let mut client = connect(url).await?;
    print!("{}", render::workers_table(&all_workers(&mut client).await?, now_ms()));
    Ok(ExitCode::SUCCESS)
}

/// Every job's summary, newest first, page by page.
pub async fn all_jobs(client: &mut Client) -> anyhow::Result<Vec<pb::Job>> {
    let (mut jobs, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client.list_jobs(pb::ListJobsRequest { page_size: 0, page_token }).await.map_err(rpc_error)?.into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

/// Every worker, by id, page by page.
pub async fn all_workers(client: &mut Client) -> anyhow::Result<Vec<pb::Worker>> {
    let (mut workers, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client.list_workers(pb::ListWorkersRequest { page_size: 0, page_token }).await.map_err(rpc_error)?.into_inner();
        workers.extend(page.workers);
        if page.next_page_token.is_empty() {
            return Ok(workers);
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feral_common::spec::JobSpec;

    #[test]
    fn relative_paths_are_made_absolute_where_the_user_typed_them() {
        let cwd = Path::new("/home/alice/runs");
        let spec = "version = 1\ndataset = \"data/fer\"\nartifacts = \"../out\"\n[model]\narch = \"resnet18\"\ninit = \"w/r18.safetensors\"\n";
        let sent = JobSpec::from_toml(&absolute_paths(spec.to_owned(), cwd)).expect("the coordinator accepts it");
        assert_eq!(sent.dataset, Path::new("/home/alice/runs/data/fer"));
        assert_eq!(sent.artifacts.as_deref(), Some(Path::new("/home/alice/runs/../out")));
        assert_eq!(sent.model.init.as_deref(), Some(Path::new("/home/alice/runs/w/r18.safetensors")));
        let error = JobSpec::from_toml(spec).expect_err("relative paths are refused").to_string();
        assert!(error.contains("`dataset`") && error.contains("absolute"), "{error}");

        // Absolute paths, and a spec that does not parse, go as written (comments kept).
        let written = "version = 1 # mine\ndataset = \"/data/fer\"\n";
        assert_eq!(absolute_paths(written.to_owned(), cwd), written);
        assert_eq!(absolute_paths("dataset = [".to_owned(), cwd), "dataset = [");
    }
}
