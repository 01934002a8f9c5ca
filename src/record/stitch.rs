//! Stitching (Tencent's "video stitching"): the complete MP4 files (or, when a range has none, FLV files) of
//! one stream over a time range joined end to end into one flat MP4, as a background job with its status in
//! the API and a completion callback.

use std::sync::Arc;

use serde::Serialize;

use super::{
    flv_file, mp4_file, naming, short_id, sidecar_path, write_json, RecordError, RecordFormat, RecordInfo,
    RecordStatus, Recorder,
};
use crate::auth::unix_now;
use crate::media::mp4::Movie;

/// Finished jobs kept for `GET /api/v1/recordings/stitch/{id}`.
const KEEP_JOBS: usize = 200;

/// Why a stitch job failed (the job's `error`).
#[derive(Debug, thiserror::Error)]
enum StitchError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Join(#[from] crate::media::mp4::Mp4Error),
    #[error("{0}")]
    Name(#[from] naming::TemplateError),
    #[error("writing the stitched file: {0}")]
    Write(std::io::Error),
}

/// Where a stitch job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Complete,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub job_id: String,
    pub app: String,
    pub stream: String,
    pub from: u64,
    pub to: u64,
    /// running | complete | failed
    pub status: JobStatus,
    /// Paths (relative to the recording root) of the files joined, in order.
    pub inputs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<RecordInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created: u64,
}

impl Recorder {
    /// Starts a stitch job. Errors: nothing recorded for the stream, or nothing complete in the range.
    pub fn stitch(
        self: &Arc<Self>,
        app: &str,
        stream: &str,
        from: u64,
        to: u64,
        callback: Option<String>,
    ) -> Result<Job, RecordError> {
        if from > to {
            return Err(RecordError::Invalid { field: "from", detail: format!("from ({from}) is after to ({to})") });
        }
        let all = self.list(Some(app), Some(stream), None, None);
        if all.is_empty() {
            return Err(RecordError::NotFound(format!("no recordings of stream {app}/{stream}")));
        }
        let in_range: Vec<RecordInfo> = all
            .into_iter()
            // Earlier stitch outputs are not inputs: they would repeat media.
            .filter(|f| f.status == RecordStatus::Complete && !f.task_id.starts_with("stitch-"))
            .filter(|f| f.start_time <= to && f.end_time >= from)
            .collect();
        // A push recorded as both MP4 and FLV would be joined twice: MP4 files when there are any, else FLV.
        let format = if in_range.iter().any(|f| f.file_format == RecordFormat::Mp4) {
            RecordFormat::Mp4
        } else {
            RecordFormat::Flv
        };
        let mut inputs: Vec<RecordInfo> = in_range.into_iter().filter(|f| f.file_format == format).collect();
        if inputs.is_empty() {
            return Err(RecordError::NotFound(format!(
                "no complete MP4 or FLV recordings of {app}/{stream} between {from} and {to}"
            )));
        }
        inputs.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.path.cmp(&b.path)));
        let id = format!("stitch-{}", short_id());
        let job = Job {
            job_id: id.clone(),
            app: app.to_owned(),
            stream: stream.to_owned(),
            from,
            to,
            status: JobStatus::Running,
            inputs: inputs.iter().map(|f| f.path.clone()).collect(),
            output: None,
            error: None,
            created: unix_now(),
        };
        {
            let mut jobs = self.jobs.lock();
            if jobs.len() >= KEEP_JOBS {
                let oldest = jobs
                    .values()
                    .filter(|j| j.status != JobStatus::Running)
                    .min_by_key(|j| j.created)
                    .map(|j| j.job_id.clone());
                if let Some(o) = oldest {
                    jobs.remove(&o);
                }
            }
            jobs.insert(id.clone(), job.clone());
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new().name(format!("stitch-{}", &id[7..15])).spawn(move || {
            let result = this.run_stitch(&id, &inputs);
            let mut jobs = this.jobs.lock();
            let Some(j) = jobs.get_mut(&id) else { return };
            match result {
                Ok(info) => {
                    tracing::info!(job = %id, file = %info.path, duration = info.duration, "stitch complete");
                    j.status = JobStatus::Complete;
                    j.output = Some(info.clone());
                    drop(jobs);
                    this.callback_to(&info, callback.as_slice());
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "stitch failed");
                    j.status = JobStatus::Failed;
                    j.error = Some(e.to_string());
                }
            }
        });
        if let Err(e) = spawned {
            self.jobs.lock().remove(&job.job_id);
            return Err(RecordError::NotFound(format!("cannot start a stitch thread: {e}")));
        }
        Ok(job)
    }

    pub fn stitch_job(&self, id: &str) -> Option<Job> {
        self.jobs.lock().get(id).cloned()
    }

    fn run_stitch(&self, id: &str, inputs: &[RecordInfo]) -> Result<RecordInfo, StitchError> {
        let mut movies = Vec::with_capacity(inputs.len());
        let mut files = Vec::with_capacity(inputs.len());
        for (k, f) in inputs.iter().enumerate() {
            let path = self.root.join(&f.path);
            let read = if f.file_format == RecordFormat::Flv {
                flv_file::read_movie(&path)
            } else {
                mp4_file::read_movie(&path)
            };
            let (m, file) = read.map_err(|source| StitchError::Read { path: f.path.clone(), source })?;
            movies.push(m.with_src(k as u32));
            files.push(file);
        }
        let movie = Movie::concat(movies)?;
        let first = &inputs[0];
        let last = inputs.last().expect("at least one input");
        let file_id = short_id();
        let rel = naming::render(
            &self.cfg.template,
            &naming::NameParts {
                app: &first.app,
                stream: &first.stream_id,
                record_id: id,
                file_id: &file_id,
                ext: "mp4",
                start: first.start_time,
            },
        )?;
        // Never the name of a recording: a stitched file sits beside its fragments with its own suffix.
        let rel = match rel.strip_suffix(".mp4") {
            Some(stem) => format!("{stem}_{id}.mp4"),
            None => format!("{rel}_{id}.mp4"),
        };
        let path = self.root.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StitchError::Write)?;
        }
        let (duration, size) = mp4_file::write_flat(&path, &movie, &files).map_err(StitchError::Write)?;
        let info = RecordInfo {
            event_type: 100,
            app: first.app.clone(),
            appname: first.appname.clone(),
            stream_id: first.stream_id.clone(),
            channel_id: first.channel_id.clone(),
            file_id,
            file_format: RecordFormat::Mp4,
            task_id: id.to_owned(),
            record_id: id.to_owned(),
            start_time: first.start_time,
            end_time: last.end_time,
            duration,
            file_size: size,
            stream_param: first.stream_param.clone(),
            video_url: format!("{}/{}", self.base_url, rel),
            status: RecordStatus::Complete,
            path: rel,
            error: None,
        };
        write_json(&sidecar_path(&path), &info).map_err(StitchError::Write)?;
        Ok(info)
    }
}
