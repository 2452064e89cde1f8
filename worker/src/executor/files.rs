//! An attempt's files on the worker: a fresh directory with the job's
//! inputs downloaded into `in/` and an empty `out/` for the program, and the
//! upload of what the program wrote there to the attempt's signed output
//! URLs. Both transfers stream: memory does not grow with file size. The
//! directory is removed when the attempt ends, however it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use admedia_actors::attempt_files::{InputFile, OutputSlot};
use admedia_actors::domain::job::Output;
use admedia_actors::domain::material::{MediaType, SNIFF_BYTES};
use awc::body::SizedStream;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Assignment;

/// Chunks read from disk for an upload.
const CHUNK: usize = 256 * 1024;
/// No transfer takes longer than the attempt's deadline, which stops it;
/// this only bounds a connection that stops answering.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// An input as the program sees it.
#[derive(Clone, Debug, Serialize)]
pub struct LocalInput {
    pub role: String,
    pub material_id: String,
    pub content_type: String,
    pub path: PathBuf,
}

pub struct Workspace {
    root: PathBuf,
    pub output_dir: PathBuf,
    pub inputs: Vec<LocalInput>,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(dir = %self.root.display(), error = %e, "could not remove an attempt's directory");
        }
    }
}

fn client() -> awc::Client {
    awc::Client::builder().timeout(TRANSFER_TIMEOUT).finish()
}

impl Workspace {
    /// A fresh directory for the attempt with its inputs downloaded.
    pub async fn prepare(job: &Assignment) -> Result<Workspace, String> {
        let root = std::env::temp_dir().join(format!(
            "admedia-{}-{}-{}",
            job.job_id,
            job.attempt,
            rand::random::<u32>()
        ));
        let input_dir = root.join("in");
        let output_dir = root.join("out");
        // `create_dir` (not `_all`) for the root: it must be new.
        std::fs::create_dir(&root)
            .and_then(|()| std::fs::create_dir(&input_dir))
            .and_then(|()| std::fs::create_dir(&output_dir))
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let mut workspace = Workspace {
            root,
            output_dir,
            inputs: Vec::new(),
        };
        let client = client();
        for (i, input) in job.inputs.iter().enumerate() {
            let extension = MediaType::ALL
                .into_iter()
                .find(|m| m.mime() == input.content_type)
                .map_or("bin", |m| m.extension());
            let path = input_dir.join(format!("{i}-{}.{extension}", input.role));
            download(&client, input, &path).await?;
            workspace.inputs.push(LocalInput {
                role: input.role.clone(),
                material_id: input.material_id.to_string(),
                content_type: input.content_type.clone(),
                path,
            });
        }
        Ok(workspace)
    }

    /// The files the program left in `out/`, by name.
    pub fn written(&self) -> Result<Vec<PathBuf>, String> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(&self.output_dir)
            .map_err(|e| format!("cannot read {}: {e}", self.output_dir.display()))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Whether `path` (named by the program) is inside `out/`.
    pub fn owns(&self, path: &Path) -> bool {
        match (path.canonicalize(), self.output_dir.canonicalize()) {
            (Ok(p), Ok(dir)) => p.starts_with(dir) && p.is_file(),
            _ => false,
        }
    }

    /// Uploads `files` to the attempt's slots, one each, in order, and says
    /// which objects now hold them. The count must match: the server would
    /// refuse the completion anyway, and a clear reason helps more.
    pub async fn deliver(
        &self,
        files: &[PathBuf],
        slots: &[OutputSlot],
    ) -> Result<Vec<Output>, String> {
        if files.len() != slots.len() {
            return Err(format!(
                "the program wrote {} output file(s); the job asked for {}",
                files.len(),
                slots.len()
            ));
        }
        let client = client();
        let mut outputs = Vec::with_capacity(files.len());
        for (file, slot) in files.iter().zip(slots) {
            let media = upload(&client, file, slot).await?;
            outputs.push(Output::new(
                slot.key.clone(),
                media.map_or("application/octet-stream", |m| m.mime()),
            ));
        }
        Ok(outputs)
    }
}

async fn download(client: &awc::Client, input: &InputFile, path: &Path) -> Result<(), String> {
    let what = format!("{} {}", input.role, input.material_id);
    let mut response = client
        .get(&input.url)
        .send()
        .await
        .map_err(|e| format!("downloading {what}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("downloading {what}: HTTP {}", response.status()));
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    while let Some(chunk) = response.next().await {
        let chunk = chunk.map_err(|e| format!("downloading {what}: {e}"))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// PUTs `path` to the slot's signed URL with its length (S3 refuses a
/// chunked upload); returns the type its first bytes say.
async fn upload(
    client: &awc::Client,
    path: &Path,
    slot: &OutputSlot,
) -> Result<Option<MediaType>, String> {
    let shown = path.display().to_string();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    let mut head = vec![0u8; SNIFF_BYTES];
    let n = file
        .read(&mut head)
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    head.truncate(n);
    let media = MediaType::sniff(&head);
    let first = Bytes::from(head);
    let rest = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    let response = client
        .put(&slot.upload_url)
        .send_body(SizedStream::new(size, Box::pin(body)))
        .await
        .map_err(|e| format!("uploading output {}: {e}", slot.index))?;
    if !response.status().is_success() {
        return Err(format!(
            "uploading output {}: HTTP {}",
            slot.index,
            response.status()
        ));
    }
    Ok(media)
}
