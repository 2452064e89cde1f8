//! Flags (each also an `ADMEDIA_*` variable) and their checks. Everything
//! that can be wrong with the configuration is refused here, before the
//! first connection, so a misconfigured worker fails at once instead of
//! failing every job the server sends it.

use std::time::Duration;

use admedia_actors::domain::job::JobKind;
use admedia_actors::wire::FromWorker;
use admedia_process::telemetry::LogFormat;
use admedia_process::tls::{self, Trust};
use awc::http::header::HeaderValue;
use clap::{Parser, ValueEnum};

use crate::executor::command::Program;

#[derive(Parser, Debug)]
#[command(
    name = "admedia-worker",
    version,
    about = "AdMedia GPU worker agent: connects to the orchestrator and runs the jobs it assigns"
)]
pub struct Args {
    /// The orchestrator, e.g. `ws://127.0.0.1:8080`; the agent connects to
    /// `{server}/v1/workers/connect`.
    #[arg(
        long,
        env = "ADMEDIA_SERVER_URL",
        default_value = "ws://127.0.0.1:8080"
    )]
    pub server: String,
    /// PEM file of the CA certificates a `wss://` server's certificate must
    /// chain to; without it, the system's root certificates.
    #[arg(long, env = "ADMEDIA_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The shared worker token (`ADMEDIA_WORKER_TOKEN` of the server).
    #[arg(long, env = "ADMEDIA_WORKER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This worker's name in the server's logs (default: hostname-pid).
    #[arg(long, env = "ADMEDIA_WORKER_NAME")]
    pub name: Option<String>,
    /// Attempts run at the same time.
    #[arg(long, env = "ADMEDIA_WORKER_SLOTS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub slots: u32,
    /// How attempts are run: `simulate` sleeps, `command` runs a program per
    /// attempt, `persistent` keeps one model program running.
    #[arg(long, env = "ADMEDIA_EXECUTOR", value_enum, default_value_t = ExecutorKind::Simulate)]
    pub executor: ExecutorKind,
    /// Duration of one simulated attempt, in milliseconds.
    #[arg(long = "sim-job-ms", env = "ADMEDIA_SIM_JOB_MS", value_name = "MS",
          default_value = "1000", value_parser = admedia_actors::domain::price_schedule::parse_millis)]
    pub sim_job_time: Duration,
    /// Probability that a simulated attempt fails with a system failure.
    #[arg(long, env = "ADMEDIA_SIM_FAILURE_RATE", default_value_t = 0.0, value_parser = probability)]
    pub sim_failure_rate: f64,
    /// Probability that a simulated attempt fails with a user error.
    #[arg(long, env = "ADMEDIA_SIM_USER_ERROR_RATE", default_value_t = 0.0, value_parser = probability)]
    pub sim_user_error_rate: f64,
    /// Job kinds served, e.g. `image,video`. Default: both for `simulate`;
    /// those with a command for `command`.
    #[arg(long, env = "ADMEDIA_WORKER_KINDS", value_delimiter = ',', value_parser = job_kind)]
    pub kinds: Option<Vec<JobKind>>,
    /// Models served (empty: any).
    #[arg(long, env = "ADMEDIA_WORKER_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Models already in GPU memory; the server prefers this worker for them.
    #[arg(long, env = "ADMEDIA_WORKER_LOADED_MODELS", value_delimiter = ',')]
    pub loaded_models: Vec<String>,
    /// GPU model, reported to the server.
    #[arg(long, env = "ADMEDIA_GPU_MODEL", default_value = "")]
    pub gpu_model: String,
    /// GPU memory in MB; the server places only jobs that fit.
    #[arg(long, env = "ADMEDIA_VRAM_MB", default_value_t = 80_000)]
    pub vram_mb: u32,
    /// Program and arguments run for an image attempt (`command` executor).
    #[arg(long, env = "ADMEDIA_IMAGE_COMMAND")]
    pub image_command: Option<String>,
    /// Program and arguments run for a video attempt (`command` executor).
    #[arg(long, env = "ADMEDIA_VIDEO_COMMAND")]
    pub video_command: Option<String>,
    /// The long-lived model program (`persistent` executor), speaking JSON
    /// lines on stdin/stdout; serves `--kinds` (default: image).
    #[arg(long, env = "ADMEDIA_MODEL_COMMAND")]
    pub model_command: Option<String>,
    /// `pretty` for people, `json` for log pipelines.
    #[arg(long, env = "ADMEDIA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    Simulate,
    Command,
    Persistent,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err("must be between 0 and 1".into())
    }
}

fn job_kind(s: &str) -> Result<JobKind, String> {
    JobKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s.trim())
        .ok_or_else(|| format!("unknown job kind {s:?} (image or video)"))
}

/// How attempts run, with everything the executor needs already checked.
#[derive(Clone, Debug)]
pub enum ExecutorConfig {
    Simulate {
        job: Duration,
        failure_rate: f64,
        user_error_rate: f64,
    },
    Command {
        image: Option<Program>,
        video: Option<Program>,
    },
    Persistent {
        program: Program,
    },
}

/// The checked configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The full WebSocket URL of the worker endpoint.
    pub url: String,
    /// TLS settings for a `wss://` server; `None` for `ws://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// `Bearer <token>`, already checked to be a valid header value.
    pub authorization: HeaderValue,
    pub slots: u32,
    pub kinds: Vec<JobKind>,
    pub executor: ExecutorConfig,
    /// The `hello` sent on every connection.
    pub hello: FromWorker,
}

impl Args {
    pub fn into_config(self) -> Result<Config, String> {
        let url = connect_url(&self.server)?;
        let tls = if url.starts_with("wss://") {
            let trust = match &self.ca_file {
                Some(path) => Trust::CaFile(path),
                None => Trust::SystemRoots,
            };
            let config = tls::client_config(trust).map_err(|e| match trust {
                Trust::CaFile(_) => format!("--ca-file: {e}"),
                Trust::SystemRoots => {
                    format!(
                        "--server {}: {e}; give a CA file with --ca-file",
                        self.server
                    )
                }
            })?;
            Some(config)
        } else {
            if self.ca_file.is_some() {
                return Err("--ca-file is for a wss:// --server".into());
            }
            None
        };
        if self.token.trim().is_empty() {
            return Err("--token must not be empty".into());
        }
        let authorization = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| "--token must be visible ASCII characters".to_owned())?;
        let executor = match self.executor {
            ExecutorKind::Simulate => ExecutorConfig::Simulate {
                job: self.sim_job_time,
                failure_rate: self.sim_failure_rate,
                user_error_rate: self.sim_user_error_rate,
            },
            ExecutorKind::Command => ExecutorConfig::Command {
                image: program("--image-command", self.image_command.as_deref())?,
                video: program("--video-command", self.video_command.as_deref())?,
            },
            ExecutorKind::Persistent => ExecutorConfig::Persistent {
                program: program("--model-command", self.model_command.as_deref())?
                    .ok_or("the persistent executor needs --model-command")?,
            },
        };
        let kinds = served_kinds(self.kinds, &executor)?;
        let name = self.name.unwrap_or_else(default_name);
        let hello = FromWorker::Hello {
            name,
            slots: self.slots,
            gpu_model: self.gpu_model,
            vram_mb: self.vram_mb,
            kinds: kinds.clone(),
            models: non_empty(self.models),
            loaded_models: non_empty(self.loaded_models),
            // Each connection presents the attempts held then.
            attempts: Vec::new(),
        };
        Ok(Config {
            url,
            tls,
            authorization,
            slots: self.slots,
            kinds,
            executor,
            hello,
        })
    }
}

/// `ws://host:port[/prefix]` → `ws://host:port[/prefix]/v1/workers/connect`;
/// `http://` is taken as `ws://` and `https://` as `wss://`.
pub fn connect_url(server: &str) -> Result<String, String> {
    let server = server.trim().trim_end_matches('/');
    let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
    match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" if !rest.is_empty() => Ok(format!("ws://{rest}/v1/workers/connect")),
        "wss" | "https" if !rest.is_empty() => Ok(format!("wss://{rest}/v1/workers/connect")),
        _ => Err(format!(
            "--server {server:?} must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:8080"
        )),
    }
}

fn program(flag: &str, command: Option<&str>) -> Result<Option<Program>, String> {
    command
        .filter(|c| !c.trim().is_empty())
        .map(|c| Program::parse(c).map_err(|e| format!("{flag}: {e}")))
        .transpose()
}

/// The kinds announced in `hello`. A `command` worker announcing a kind it
/// has no program for would fail every such job, so that is refused.
fn served_kinds(
    requested: Option<Vec<JobKind>>,
    executor: &ExecutorConfig,
) -> Result<Vec<JobKind>, String> {
    let kinds = match (requested, executor) {
        (Some(kinds), _) if !kinds.is_empty() => kinds,
        (_, ExecutorConfig::Simulate { .. }) => JobKind::ALL.to_vec(),
        (_, ExecutorConfig::Persistent { .. }) => vec![JobKind::Image],
        (_, ExecutorConfig::Command { image, video }) => JobKind::ALL
            .into_iter()
            .filter(|k| match k {
                JobKind::Image => image.is_some(),
                JobKind::Video => video.is_some(),
            })
            .collect(),
    };
    // `--kinds image,image` announces image once.
    let kinds = kinds.into_iter().fold(Vec::new(), |mut seen, kind| {
        if !seen.contains(&kind) {
            seen.push(kind);
        }
        seen
    });
    if kinds.is_empty() {
        return Err("the command executor needs --image-command or --video-command".into());
    }
    if let ExecutorConfig::Command { image, video } = executor {
        for kind in &kinds {
            let missing = match kind {
                JobKind::Image => image.is_none(),
                JobKind::Video => video.is_none(),
            };
            if missing {
                return Err(format!(
                    "--kinds includes {} but --{}-command is not set",
                    kind.as_str(),
                    kind.as_str()
                ));
            }
        }
    }
    Ok(kinds)
}

fn non_empty(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_appended_to_the_server_url() {
        assert_eq!(
            connect_url("ws://127.0.0.1:8080/").as_deref(),
            Ok("ws://127.0.0.1:8080/v1/workers/connect")
        );
        assert_eq!(
            connect_url("wss://gpu.example.com/").as_deref(),
            Ok("wss://gpu.example.com/v1/workers/connect")
        );
        assert_eq!(
            connect_url("HTTPS://gpu.example.com").as_deref(),
            Ok("wss://gpu.example.com/v1/workers/connect")
        );
        assert!(connect_url("127.0.0.1:8080").is_err());
        assert!(connect_url("wss://").is_err());
        assert!(connect_url("ftp://example.com").is_err());
    }

    #[test]
    fn a_command_worker_serves_only_kinds_it_has_a_program_for() {
        let executor = ExecutorConfig::Command {
            image: Some(Program::parse("true").unwrap()),
            video: None,
        };
        assert_eq!(served_kinds(None, &executor), Ok(vec![JobKind::Image]));
        assert!(served_kinds(Some(vec![JobKind::Video]), &executor).is_err());
    }

    #[test]
    fn the_simulated_attempt_time_is_read_in_milliseconds() {
        let parse =
            |ms: &str| Args::try_parse_from(["admedia-worker", "--token", "t", "--sim-job-ms", ms]);
        let args = parse("250").unwrap();
        assert_eq!(args.sim_job_time, Duration::from_millis(250));
        match args.into_config().unwrap().executor {
            ExecutorConfig::Simulate { job, .. } => assert_eq!(job, Duration::from_millis(250)),
            other => panic!("not simulated: {other:?}"),
        }
        for bad in ["-1", "1s", "fast"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let default = Args::try_parse_from(["admedia-worker", "--token", "t"]).unwrap();
        assert_eq!(default.sim_job_time, Duration::from_secs(1));
    }
}
