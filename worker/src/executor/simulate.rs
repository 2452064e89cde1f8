//! The `simulate` executor: no GPU, just time and dice. It lets the whole
//! system (scheduling, retries, refunds) be exercised on a laptop.

use std::time::Duration;

use admedia_actors::domain::job::{FailureClass, JobKind, Output, MAX_IMAGE_COUNT};
use admedia_worker::placeholder;

use super::files::Workspace;
use super::{Assignment, Outcome, ProgressSink, Ran};

pub struct Simulate {
    pub job: Duration,
    /// Probability of a system failure (retried and refunded by the server).
    pub failure_rate: f64,
    /// Probability of a user error (charged, not retried).
    pub user_error_rate: f64,
}

impl Simulate {
    pub async fn run(&self, job: &Assignment, progress: &ProgressSink) -> Outcome {
        let half = self.job / 2;
        tokio::time::sleep(half).await;
        progress.report(50, None);
        tokio::time::sleep(self.job - half).await;
        // `random()` is in [0, 1): a rate of 0 never fails, 1 always does.
        if rand::random::<f64>() < self.failure_rate {
            return Outcome::system("simulated system failure");
        }
        if rand::random::<f64>() < self.user_error_rate {
            return Outcome::Fail {
                class: FailureClass::User,
                message: "simulated user error".into(),
            };
        }
        Outcome::Complete(outputs(job))
    }
}

/// `sim://outputs/{job_id}/{i}.png` per image, one `.mp4` for a video.
fn outputs(job: &Assignment) -> Vec<Output> {
    let (count, extension, content_type) = match job.kind {
        // Clamped to the server's own limit: a count is input, not a
        // licence to allocate without bound.
        JobKind::Image => (
            job.params.count.unwrap_or(1).clamp(1, MAX_IMAGE_COUNT),
            "png",
            "image/png",
        ),
        JobKind::Video => (1, "mp4", "video/mp4"),
    };
    (0..count)
        .map(|i| {
            Output::new(
                format!("sim://outputs/{}/{i}.{extension}", job.job_id),
                content_type,
            )
        })
        .collect()
}

/// With upload URLs, a simulated success writes one placeholder file per
/// slot, which the agent then uploads like a real program's outputs.
pub fn placeholders(job: &Assignment, workspace: &Workspace) -> Ran {
    let (bytes, media) = placeholder::of(job.kind);
    for slot in &job.outputs {
        let path = workspace
            .output_dir
            .join(format!("{:03}.{}", slot.index, media.extension()));
        if let Err(e) = std::fs::write(&path, bytes) {
            return Ran::Done(Outcome::system(format!("{}: {e}", path.display())));
        }
    }
    Ran::Files(None)
}
