//! Cloud recording: each recording is a hub reader whose frames a writer thread appends to files, cut into
//! fragments on keyframes, with a JSON sidecar per file (the metadata the API lists and the callback sends)
//! and completion callbacks in an on-disk outbox.
//!
//! Formats: FLV and MP4 (fragmented by time; MP4 also on a codec change) and HLS (one playlist per push).
//! Stitch jobs join finished MP4 files of a stream into one.

pub mod audio_file;
pub mod flv_file;
pub mod hls_file;
pub mod mp4_file;
pub mod naming;
pub mod outbox;
pub mod stitch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::unix_now;
use crate::config::AudioNeed;
use crate::config::ConfigError;
pub use crate::config::{RecordConfig, RecordFormat, RECORD_FRAGMENT_RANGE as FRAGMENT_RANGE};
use crate::events::Event;
use crate::hub::{Audience, CachePolicy, HeaderSet, Hub, HubError, Packet, Protocol, Purpose, StreamKey};
use crate::media::{Codec, MediaKind};
use audio_file::{AudioFile, AudioFormat};
use flv_file::FlvFile;
use hls_file::HlsFile;
use mp4_file::Mp4File;
use outbox::Outbox;

/// The part of `[record]` only the recorder can judge: its file name template.
pub fn check_config(cfg: &RecordConfig) -> Result<(), ConfigError> {
    naming::validate(&cfg.template).map_err(|e| ConfigError::invalid("record.template", e.to_string()))
}

/// Where a recorded file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// Being written (or left so by a crash: repaired at the next start).
    Recording,
    Complete,
    Failed,
}

impl std::fmt::Display for RecordStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordStatus::Recording => "recording",
            RecordStatus::Complete => "complete",
            RecordStatus::Failed => "failed",
        })
    }
}

/// What livegate knows about one recorded file: the sidecar's content, the API's listing entry and (with `t`
/// and `sign` added) the completion callback's body, in the field names Tencent's recording callbacks use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordInfo {
    pub event_type: u32,
    pub app: String,
    pub appname: String,
    pub stream_id: String,
    pub channel_id: String,
    pub file_id: String,
    pub file_format: RecordFormat,
    pub task_id: String,
    pub record_id: String,
    pub start_time: u64,
    pub end_time: u64,
    pub duration: f64,
    pub file_size: u64,
    pub stream_param: String,
    pub video_url: String,
    pub status: RecordStatus,
    /// Path relative to the recording root.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("{0}")]
    NotFound(String),
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("recording {0} already exists")]
    Exists(String),
}

struct Task {
    key: StreamKey,
    stop: Arc<Notify>,
    auto: bool,
}

pub struct Recorder {
    hub: Hub,
    cfg: RecordConfig,
    root: PathBuf,
    base_url: String,
    outbox: Outbox,
    tasks: Mutex<HashMap<String, Task>>,
    segment_secs: f64,
    jobs: Mutex<HashMap<String, stitch::Job>>,
    /// File states whose sidecar could not be written (disk full): listings show these instead.
    unsaved: Mutex<HashMap<PathBuf, RecordInfo>>,
    finalizer: Finalizer,
    /// Apps whose placeholder frames recordings leave out (`placeholder.record = false`).
    without_filler: Mutex<std::collections::HashSet<String>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// One background thread that rewrites closed MP4 files, one at a time (the work is disk copying; running
/// many at once would only make each slower). Started on first use.
#[derive(Default)]
struct Finalizer {
    tx: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    pending: Arc<std::sync::atomic::AtomicUsize>,
}

impl Finalizer {
    fn run(&self, job: Job) {
        use std::sync::atomic::Ordering;
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (t, rx) = std::sync::mpsc::channel::<Job>();
            let pending = self.pending.clone();
            let spawned = std::thread::Builder::new().name("mp4-finalize".into()).spawn(move || {
                for job in rx {
                    job();
                    pending.fetch_sub(1, Ordering::SeqCst);
                }
            });
            if spawned.is_ok() {
                *tx = Some(t);
            }
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        let job = match tx.as_ref() {
            Some(t) => match t.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        job();
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Recorder {
    /// Recordings of `app` leave a placeholder's frames out (its `placeholder.record = false`).
    pub fn leave_out_filler(&self, app: &str) {
        self.without_filler.lock().insert(app.to_owned());
    }

    pub fn new(hub: Hub, cfg: RecordConfig, http_listen: std::net::SocketAddr, segment_secs: f64) -> Arc<Self> {
        let root = PathBuf::from(&cfg.root);
        let base_url = if cfg.public_url.is_empty() {
            let host =
                if http_listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { http_listen.ip().to_string() };
            format!("http://{host}:{}/recordings", http_listen.port())
        } else {
            cfg.public_url.trim_end_matches('/').to_owned()
        };
        let outbox = Outbox::new(&root, cfg.callback_retries, Duration::from_secs_f64(cfg.callback_interval_secs));
        Arc::new(Self {
            hub,
            cfg,
            root,
            base_url,
            outbox,
            tasks: Mutex::new(HashMap::new()),
            segment_secs,
            jobs: Mutex::new(HashMap::new()),
            unsaved: Mutex::new(HashMap::new()),
            finalizer: Finalizer::default(),
            without_filler: Mutex::new(Default::default()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks the root is writable (a clear error at start rather than at the first publish).
    pub fn check_root(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let probe = self.root.join(".write-test");
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(probe)
    }

    /// Background work: callback delivery, finishing files a crash left open, and auto-recording on publish.
    pub fn spawn(self: &Arc<Self>, auto_apps: HashMap<String, Vec<RecordFormat>>) {
        tokio::spawn(self.outbox.clone().run());
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.recover());
        let this = self.clone();
        let mut rx = self.hub.events().subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    // An edge's copy of another node's stream is recorded where it is published.
                    Ok(Event::Publish { protocol: crate::hub::Protocol::Edge, .. }) => {}
                    Ok(Event::Publish { stream: key, .. }) => {
                        // A rendition (`x@opus`, `x@aac`) is the same push in another codec, not a stream to record:
                        // recording it would also start renditions of it, without end.
                        if crate::names::is_rendition(&key.name) {
                            continue;
                        }
                        let Some(formats) = auto_apps.get(&key.app).filter(|f| !f.is_empty()) else { continue };
                        let running = this.tasks.lock().values().any(|t| t.auto && t.key == key);
                        if !running {
                            let id = format!("auto-{}", short_id());
                            if let Err(e) =
                                this.start_task(key, formats.clone(), this.cfg.fragment_secs, id, Start::Publish)
                            {
                                tracing::warn!(error = %e, "auto recording not started");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }

    /// Starts recording a live stream (the API's `POST /api/v1/recordings`).
    pub fn start(
        self: &Arc<Self>,
        key: StreamKey,
        formats: Vec<String>,
        fragment_secs: Option<u64>,
        record_id: Option<String>,
        pre_roll_secs: Option<f64>,
    ) -> Result<String, RecordError> {
        if formats.is_empty() {
            return Err(RecordError::Invalid { field: "formats", detail: "at least one format is needed".into() });
        }
        let formats = formats
            .iter()
            .map(|f| {
                RecordFormat::parse(f).ok_or_else(|| RecordError::Invalid {
                    field: "formats",
                    detail: format!("{f:?} is not supported (supported: flv, mp4, hls, m4a, aac, mp3)"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fragment = fragment_secs.unwrap_or(self.cfg.fragment_secs);
        if !FRAGMENT_RANGE.contains(&fragment) {
            return Err(RecordError::Invalid {
                field: "fragment_secs",
                detail: format!("{fragment} is outside 60..=7200"),
            });
        }
        let id = match record_id {
            Some(id) => {
                crate::names::validate("record_id", &id)
                    .map_err(|e| RecordError::Invalid { field: "record_id", detail: e.to_string() })?;
                id
            }
            None => short_id(),
        };
        let retention = self.hub.options().retention;
        let pre_roll = pre_roll_secs.unwrap_or(0.0);
        if !(pre_roll.is_finite() && pre_roll >= 0.0 && pre_roll <= retention.as_secs_f64()) {
            return Err(RecordError::Invalid {
                field: "pre_roll_secs",
                detail: format!("{pre_roll} is outside 0..={} (hub.buffer_secs)", retention.as_secs_f64()),
            });
        }
        if self.tasks.lock().contains_key(&id) {
            return Err(RecordError::Exists(id));
        }
        // A format that needs another audio codec than the push's reads a rendition (MP3 → AAC for MP4, AAC → MP3
        // for MP3 files); one whose audio cannot be had at all is refused with the reason.
        if let Some(codec) = self.hub.get(&key).and_then(|s| s.audio_codec()) {
            for f in &formats {
                let Some(need) = f.audio_need() else { continue };
                if !need_met(need, codec) && crate::transcode::audio_rendition(codec, need).is_none() {
                    return Err(RecordError::Invalid {
                        field: "formats",
                        detail: format!(
                            "stream {key} has {} audio, which {f} recordings cannot carry: record \"flv\" or \"hls\"",
                            codec.name()
                        ),
                    });
                }
            }
        }
        self.start_task(
            key,
            formats,
            fragment,
            id.clone(),
            Start::Request { pre_roll: Duration::from_secs_f64(pre_roll) },
        )?;
        Ok(id)
    }

    fn start_task(
        self: &Arc<Self>,
        key: StreamKey,
        formats: Vec<RecordFormat>,
        fragment_secs: u64,
        record_id: String,
        start: Start,
    ) -> Result<(), RecordError> {
        let auto = start == Start::Publish;
        // A stream pulled on demand (a cluster edge's) starts for its recording as for a player.
        let stream = self
            .hub
            .open_stream(&key)
            .ok()
            .flatten()
            .ok_or_else(|| RecordError::NotFound(format!("stream {key} is not being published")))?;
        let guard = self.hub.register_client(Protocol::Record, None);
        // Never skipping; from the start of the push (a recording on publish), or from the keyframe at or
        // before the request (pre_roll_secs earlier if asked): never from media of an earlier push.
        let retention = self.hub.options().retention;
        let min_cache = match start {
            Start::Publish => retention,
            Start::Request { pre_roll } => pre_roll,
        };
        let policy =
            CachePolicy { min_cache, max_cache: retention, max_skips_per_minute: u32::MAX, low_latency: false };
        let audience = Audience::Internal(Purpose::Recording { record_id: record_id.clone() });
        let mut reader = self
            .hub
            .subscribe_as(&key, Protocol::Record, policy, guard.handle.clone(), audience.clone())
            .map_err(|e| match e {
                HubError::NotFound(m) => RecordError::NotFound(m),
                other => RecordError::NotFound(other.to_string()),
            })?;
        reader.start_from_session(stream.current_session());
        let stop = Arc::new(Notify::new());
        self.tasks.lock().insert(record_id.clone(), Task { key: key.clone(), stop: stop.clone(), auto });
        let param = stream.publisher().map(|p| p.param).unwrap_or_default();
        let this = self.clone();
        let task_id = short_id();
        tokio::spawn(async move {
            let client = guard;
            tracing::info!(stream = %key, record_id = %record_id, "recording started");
            let writer = |formats: Vec<RecordFormat>, audio_from_rendition: Option<AudioNeed>| Writer {
                rec: this.clone(),
                stream: stream.clone(),
                key: key.clone(),
                record_id: record_id.clone(),
                task_id: task_id.clone(),
                formats,
                fragment_ms: fragment_secs as i64 * this.cfg.fragment_unit_ms as i64,
                param: param.clone(),
                audio_from_rendition,
            };
            // Which formats need their audio from a rendition is known once the stream's audio codec is: at once
            // for a live stream, at its first audio frame for a recording that starts with the push (whose reader
            // waits meanwhile, losing nothing: it reads from the cache).
            if formats.iter().any(|f| f.audio_need().is_some()) && stream.audio_codec().is_none() {
                let deadline = Instant::now() + AUDIO_CODEC_WAIT;
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while stream.audio_codec().is_none() && Instant::now() < deadline && !stream.is_closed() {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.notified() => { stop.notify_one(); break; }
                    }
                }
            }
            let plan = plan_audio(&formats, stream.audio_codec());
            let mut companion = None;
            let mut lanes = Vec::new();
            if !plan.direct.is_empty() {
                lanes.push(spawn_writer(writer(plan.direct.clone(), None)));
            }
            if let Some((need, suffix, formats)) = plan.rendition {
                let derived = StreamKey::new(&key.app, &format!("{}@{suffix}", key.name));
                match this.hub.subscribe_as(&derived, Protocol::Record, policy, client.handle.clone(), audience) {
                    Ok(r) => {
                        tracing::info!(stream = %key, rendition = %derived, formats = ?formats, "recording audio from a rendition");
                        companion = Some(r);
                        lanes.push(spawn_writer(writer(formats, Some(need))));
                    }
                    Err(e) => {
                        let w = writer(formats.clone(), Some(need));
                        for &f in &formats {
                            let detail = format!("no {suffix} rendition of {key}: {e}");
                            let info = RecordInfo { error: Some(detail), ..w.blank_info(f) };
                            this.failed_event(&key, &record_id, &info);
                        }
                    }
                }
            }
            if lanes.is_empty() {
                // Every format needed a rendition that could not start (each reported as failed above).
                this.tasks.lock().remove(&record_id);
                tracing::warn!(stream = %key, record_id = %record_id, "recording stopped: nothing it can write");
                return;
            }
            let mut batch = Vec::new();
            let mut side = Vec::new();
            let mut skips = 0;
            // The companion rendition transcodes from the push's start in the cache: its frames before this
            // recording's first frame are not this recording's.
            let mut first_dts: Option<i64> = None;
            'run: loop {
                tokio::select! {
                    r = reader.next_batch(&mut batch) => {
                        if r.is_err() {
                            break;
                        }
                        if reader.skips != skips {
                            // The writer could not keep up with the hub's buffer: media is missing from the file.
                            skips = reader.skips;
                            tracing::warn!(stream = %key, record_id = %record_id, skips, "recording fell behind and lost media");
                        }
                        if this.without_filler.lock().contains(&key.app) {
                            batch.retain(|p| !p.filler);
                            if batch.is_empty() {
                                continue;
                            }
                        }
                        if first_dts.is_none() {
                            first_dts = batch.iter().find(|p| !p.frame.config).map(|p| p.frame.dts);
                        }
                        // Each writer gets the batch; the last one takes it (one writer: no copy).
                        let mut out = std::mem::take(&mut batch);
                        for (i, lane) in lanes.iter().enumerate() {
                            let b = if i + 1 == lanes.len() { std::mem::take(&mut out) } else { out.clone() };
                            if lane.tx.send(b).await.is_err() {
                                break 'run; // a writer stopped (disk error)
                            }
                        }
                    }
                    r = next_side(&mut companion, &mut side) => {
                        if r.is_err() {
                            companion = None; // the rendition ended; the source decides when the recording does
                            continue;
                        }
                        let from = first_dts.unwrap_or(i64::MAX);
                        let mine: Vec<_> = side.drain(..).filter(|p| p.frame.config || p.frame.dts >= from).collect();
                        if let Some(lane) = lanes.last().filter(|_| !mine.is_empty()) {
                            if lane.tx.send(mine).await.is_err() {
                                break 'run;
                            }
                        }
                    }
                    _ = stop.notified() => break,
                }
            }
            drop(companion);
            for lane in lanes {
                drop(lane.tx);
                let _ = lane.done.await;
            }
            this.tasks.lock().remove(&record_id);
            tracing::info!(stream = %key, record_id = %record_id, "recording stopped");
        });
        Ok(())
    }

    /// Stops a recording; its current file is finished and called back as usual.
    pub fn stop(&self, record_id: &str) -> bool {
        match self.tasks.lock().get(record_id) {
            Some(t) => {
                t.stop.notify_one();
                true
            }
            None => false,
        }
    }

    /// Closed files still being rewritten (graceful shutdown waits for them; a crash leaves them to recovery).
    pub fn finalizing(&self) -> usize {
        self.finalizer.pending.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn running(&self) -> Vec<(String, StreamKey)> {
        self.tasks.lock().iter().map(|(id, t)| (id.clone(), t.key.clone())).collect()
    }

    /// All recorded files (from their sidecars), filtered; newest first.
    pub fn list(&self, app: Option<&str>, stream: Option<&str>, from: Option<u64>, to: Option<u64>) -> Vec<RecordInfo> {
        let mut out = Vec::new();
        self.walk(&mut |_, info| {
            let keep = app.is_none_or(|a| info.app == a)
                && stream.is_none_or(|s| info.stream_id == s)
                && from.is_none_or(|f| info.end_time >= f || info.status == RecordStatus::Recording)
                && to.is_none_or(|t| info.start_time <= t);
            if keep {
                out.push(info);
            }
        });
        out.sort_by(|a, b| b.start_time.cmp(&a.start_time).then(b.file_id.cmp(&a.file_id)));
        out
    }

    /// Deletes a finished file and its sidecar.
    pub fn delete(&self, file_id: &str) -> Result<RecordInfo, RecordError> {
        let mut found = None;
        self.walk(&mut |p, info| {
            if info.file_id == file_id {
                found = Some((p.to_path_buf(), info));
            }
        });
        let (sidecar, info) =
            found.ok_or_else(|| RecordError::NotFound(format!("no recording with file_id {file_id}")))?;
        if info.status == RecordStatus::Recording {
            return Err(RecordError::Invalid { field: "file_id", detail: "the file is still being recorded".into() });
        }
        remove_recording(&self.root, &info);
        let _ = std::fs::remove_file(&sidecar);
        self.unsaved.lock().remove(&sidecar);
        Ok(info)
    }

    /// At start-up: files left "recording" by a crash are cut at their last whole tag, finished and called back.
    fn recover(&self) {
        let mut open = Vec::new();
        walk_sidecars(&self.root, &mut |p, info| {
            if info.status == RecordStatus::Recording {
                open.push((p.to_path_buf(), info));
            }
        });
        for (sidecar, mut info) in open {
            let path = self.root.join(&info.path);
            let repaired = match info.file_format {
                RecordFormat::Hls => hls_file::repair(&path),
                RecordFormat::Mp4 | RecordFormat::M4a => mp4_file::finalize(&path),
                RecordFormat::Aac => audio_file::repair(&path, AudioFormat::Adts),
                RecordFormat::Mp3 => audio_file::repair(&path, AudioFormat::Mp3),
                RecordFormat::Flv => flv_file::repair(&path),
            };
            match repaired {
                Ok((duration, _)) if duration < self.cfg.min_secs => {
                    // Killed within the first second: no recording, as for a short push.
                    remove_recording(&self.root, &info);
                    let _ = std::fs::remove_file(&sidecar);
                    continue;
                }
                Ok((duration, size)) => {
                    info.duration = duration;
                    info.file_size = size;
                    info.end_time = info.start_time + duration.round() as u64;
                    info.status = RecordStatus::Complete;
                    tracing::info!(file = %info.path, duration, "unfinished recording recovered");
                }
                Err(e) => {
                    info.status = RecordStatus::Failed;
                    info.error = Some(format!("recovery failed: {e}"));
                }
            }
            let _ = write_json(&sidecar, &info);
            self.callback(&info);
        }
    }

    fn callback(&self, info: &RecordInfo) {
        self.callback_to(info, &[]);
    }

    /// Every sidecar under the root, with the in-memory state of those that could not be saved.
    fn walk(&self, f: &mut dyn FnMut(&Path, RecordInfo)) {
        let unsaved = self.unsaved.lock().clone();
        walk_sidecars(&self.root, &mut |p, info| match unsaved.get(p) {
            Some(newer) => f(p, newer.clone()),
            None => f(p, info),
        });
    }

    /// Saves a file's state to its sidecar; on a full disk it is kept in memory (the API still shows it, and
    /// the next start, finding the sidecar still "recording", finishes the file again).
    fn store_info(&self, sidecar: &Path, info: &RecordInfo) {
        match write_json(sidecar, info) {
            Ok(()) => {
                self.unsaved.lock().remove(sidecar);
            }
            Err(e) => {
                tracing::warn!(file = %info.path, error = %e, "recording sidecar not saved; kept in memory");
                self.unsaved.lock().insert(sidecar.to_path_buf(), info.clone());
            }
        }
    }

    /// The `on_record_failed` event on the bus (webhooks, logs).
    fn failed_event(&self, key: &StreamKey, record_id: &str, info: &RecordInfo) {
        self.hub.events().send(Event::RecordFailed {
            stream: key.clone(),
            record_id: record_id.to_owned(),
            file: info.path.clone(),
            file_format: info.file_format,
            error: info.error.clone().unwrap_or_default(),
        });
    }

    /// The completion callback to the configured URLs plus `extra` (a stitch job's own callback).
    fn callback_to(&self, info: &RecordInfo, extra: &[String]) {
        let mut urls = self.cfg.callback_urls.clone();
        urls.extend(extra.iter().cloned());
        let t = unix_now() + 86_400;
        let mut body = serde_json::to_value(info).unwrap_or_default();
        body["t"] = serde_json::json!(t);
        body["sign"] = serde_json::json!(crate::auth::sign(&self.cfg.callback_key, "", &t.to_string()));
        if let Err(e) = self.outbox.enqueue(&info.file_id, &urls, body) {
            tracing::error!(error = %e, file = %info.path, "cannot store the recording callback");
        }
    }
}

fn short_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn write_json(path: &Path, info: &RecordInfo) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let r = std::fs::write(&tmp, serde_json::to_vec_pretty(info).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn walk_sidecars(dir: &Path, f: &mut dyn FnMut(&Path, RecordInfo)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk_sidecars(&p, f);
        } else if name.to_string_lossy().ends_with(".rec.json") {
            if let Ok(info) = std::fs::read(&p).map_err(|_| ()).and_then(|b| serde_json::from_slice(&b).map_err(|_| ()))
            {
                f(&p, info);
            }
        }
    }
}

/// What a recording is writing now, per format.
enum Sink {
    Flv(FlvFile),
    /// MP4 and M4A.
    Mp4(Box<Mp4File>),
    Hls(Box<HlsFile>),
    /// ADTS and MP3.
    Audio(AudioFile),
}

struct Open {
    sink: Sink,
    info: RecordInfo,
    sidecar: PathBuf,
    first_dts: i64,
    /// When the newest frame written arrived: the file's end_time.
    last_received: Instant,
    last_flush: Instant,
    last_sync: Instant,
}

impl Open {
    fn bytes(&self) -> u64 {
        match &self.sink {
            Sink::Flv(f) => f.bytes,
            Sink::Mp4(m) => m.bytes,
            Sink::Hls(h) => h.bytes,
            Sink::Audio(a) => a.bytes,
        }
    }

    fn write(&mut self, p: &Packet) -> std::io::Result<()> {
        if !p.frame.config {
            self.last_received = self.last_received.max(p.received);
        }
        match &mut self.sink {
            Sink::Flv(f) => f.write(&p.frame),
            Sink::Mp4(m) => m.write(&p.frame),
            Sink::Hls(h) => h.push(p),
            Sink::Audio(a) => a.write(&p.frame),
        }
    }
}

/// Pushes what an append-only file has buffered to the kernel (it survives a SIGKILL) and, with `sync`, to the
/// disk (a power loss).
fn flush_appended(out: &mut std::io::BufWriter<std::fs::File>, sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    out.flush()?;
    if sync {
        out.get_ref().sync_data()?;
    }
    Ok(())
}

/// The Unix time (seconds) of a monotonic instant in the past.
fn wall_secs(at: Instant) -> u64 {
    let wall = std::time::SystemTime::now() - Instant::now().saturating_duration_since(at);
    wall.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where a recording begins.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    /// Recording on publish (`[apps.X] record`): from the push's first keyframe.
    Publish,
    /// Started through the API: from the keyframe at or before the request, `pre_roll` earlier if asked.
    Request { pre_roll: Duration },
}

/// How long a recording that needs to know the stream's audio codec waits for its first audio frame; a stream
/// with no audio by then is recorded as it is.
const AUDIO_CODEC_WAIT: Duration = Duration::from_secs(3);

/// Where each format of a recording gets its audio.
#[derive(Debug, Default, PartialEq)]
struct AudioPlan {
    /// Formats that take the stream as it is.
    direct: Vec<RecordFormat>,
    /// Formats that read their audio from a rendition (AAC of an MP3 push, MP3 of an AAC push), with its suffix.
    rendition: Option<(AudioNeed, &'static str, Vec<RecordFormat>)>,
}

fn plan_audio(formats: &[RecordFormat], audio: Option<Codec>) -> AudioPlan {
    let mut plan = AudioPlan::default();
    for &f in formats {
        let via = f
            .audio_need()
            .zip(audio)
            .and_then(|(need, codec)| crate::transcode::audio_rendition(codec, need).map(|suffix| (need, suffix)));
        match (via, plan.rendition.as_mut()) {
            (Some(_), Some((_, _, list))) => list.push(f),
            (Some((need, suffix)), None) => plan.rendition = Some((need, suffix, vec![f])),
            (None, _) => plan.direct.push(f),
        }
    }
    plan
}

/// Whether audio in `codec` is what a format needing `need` takes.
fn need_met(need: AudioNeed, codec: Codec) -> bool {
    match need {
        AudioNeed::Aac => codec == Codec::Aac,
        AudioNeed::Mp3 => codec.is_mp3(),
    }
}

/// A writer thread and the channel that feeds it.
struct Lane {
    tx: tokio::sync::mpsc::Sender<Vec<Arc<Packet>>>,
    done: tokio::sync::oneshot::Receiver<()>,
}

/// A dedicated thread per writer, not the blocking pool: that pool is capped (512) and a recording waiting for a
/// slot would fall behind the hub's buffer and lose media.
fn spawn_writer(writer: Writer) -> Lane {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Arc<Packet>>>(256);
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    let name = format!("rec-{}", writer.record_id);
    let spawned = std::thread::Builder::new().name(name).stack_size(256 * 1024).spawn(move || {
        writer.run(rx);
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        // The writer (and the receiver) went down with the failed spawn: its sender sees a closed channel and
        // the recording stops.
        tracing::error!(error = %e, "cannot start a recording thread");
    }
    Lane { tx, done }
}

/// The next batch of an optional reader; pending forever without one.
async fn next_side(r: &mut Option<crate::hub::Reader>, batch: &mut Vec<Arc<Packet>>) -> Result<(), ()> {
    match r {
        Some(r) => r.next_batch(batch).await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

/// Runs on a blocking thread: disk writes never stall the runtime.
struct Writer {
    rec: Arc<Recorder>,
    stream: Arc<crate::hub::Stream>,
    key: StreamKey,
    record_id: String,
    task_id: String,
    formats: Vec<RecordFormat>,
    fragment_ms: i64,
    param: String,
    /// Set when this writer's formats take their audio from a rendition: the source's own audio is not theirs.
    audio_from_rendition: Option<AudioNeed>,
}

impl Writer {
    fn run(self, mut rx: tokio::sync::mpsc::Receiver<Vec<Arc<Packet>>>) {
        let resume = Duration::from_secs_f64(self.rec.cfg.resume_secs);
        let mut headers = HeaderSet::default();
        let mut has_video = false;
        let mut has_audio = false;
        // One slot per format, in `formats` order.
        let mut open: Vec<Option<Open>> = self.formats.iter().map(|_| None).collect();
        let mut last: Option<(u64, Instant)> = None;
        while let Some(batch) = rx.blocking_recv() {
            for p in batch {
                let f = &p.frame;
                if f.kind == MediaKind::Audio && self.audio_from_rendition.is_some_and(|need| !need_met(need, f.codec))
                {
                    continue; // the source's own audio: these formats take the rendition's
                }
                if f.config {
                    *headers.slot_mut(f.kind) = Some(p.clone());
                    match f.kind {
                        MediaKind::Video => has_video = true,
                        MediaKind::Audio => has_audio = true,
                        MediaKind::Data => continue,
                    }
                    // New codec configuration mid-file: FLV and TS carry it in-band; MP4 starts a new file
                    // (at the next keyframe) when the codec or resolution changed.
                    for i in 0..open.len() {
                        let restart = matches!(&open[i], Some(Open { sink: Sink::Mp4(m), .. }) if m.config_changed(f));
                        if restart {
                            if let Some(o) = open[i].take() {
                                tracing::info!(file = %o.info.path, "codec configuration changed: new MP4 file");
                                self.finish(o);
                            }
                            continue;
                        }
                        if let Some(o) = open[i].as_mut() {
                            if let Err(e) = o.write(&p) {
                                return self.fail(&mut open, i, e);
                            }
                        }
                    }
                    continue;
                }
                if f.kind == MediaKind::Data {
                    continue;
                }
                has_video |= f.kind == MediaKind::Video;
                has_audio |= f.kind == MediaKind::Audio;
                if let Some((session, at)) = last {
                    if session != p.session {
                        if p.received.duration_since(at) > resume {
                            // A push interruption: every format starts a new file.
                            for slot in open.iter_mut() {
                                if let Some(o) = slot.take() {
                                    self.finish(o);
                                }
                            }
                        } else {
                            for o in open.iter_mut().flatten() {
                                if let Sink::Hls(h) = &mut o.sink {
                                    if let Err(e) = h.discontinuity() {
                                        tracing::warn!(error = %e, "hls recording: segment not written");
                                    }
                                }
                            }
                        }
                    }
                }
                last = Some((p.session, p.received));
                let av_boundary = if has_video { f.kind == MediaKind::Video && f.keyframe } else { true };
                for i in 0..open.len() {
                    let format = self.formats[i];
                    // An audio-only file starts (and is cut) on any audio frame it takes; the others on keyframes.
                    let boundary = if format.audio_only() {
                        f.kind == MediaKind::Audio && format.audio_need().is_none_or(|n| need_met(n, f.codec))
                    } else {
                        av_boundary
                    };
                    // FLV, MP4 and audio files are cut into fragments; an HLS recording is one playlist per push.
                    let fragment_due = open[i].as_ref().is_some_and(|o| {
                        matches!(o.sink, Sink::Flv(_) | Sink::Mp4(_) | Sink::Audio(_))
                            && boundary
                            && f.dts - o.first_dts >= self.fragment_ms
                    });
                    if fragment_due {
                        if let Some(o) = open[i].take() {
                            self.finish(o);
                        }
                    }
                    if open[i].is_none() {
                        if !boundary {
                            continue; // files start on a keyframe
                        }
                        let ready = match format {
                            // An MP4 needs the H.264/H.265 and AAC configurations before its first frame.
                            RecordFormat::Mp4 => mp4_ready(&headers, has_video, has_audio),
                            RecordFormat::M4a => mp4_ready(&headers, false, true),
                            RecordFormat::Aac => headers.audio.as_ref().is_some_and(|h| h.frame.codec == Codec::Aac),
                            _ => true,
                        };
                        if !ready {
                            continue;
                        }
                        match self.open(format, &p, has_video, has_audio, &headers) {
                            Ok(o) => open[i] = Some(o),
                            Err(e) => return self.fail(&mut open, i, e),
                        }
                    }
                    let o = open[i].as_mut().expect("opened above");
                    if let Err(e) = o.write(&p) {
                        return self.fail(&mut open, i, e);
                    }
                    if o.last_flush.elapsed() >= Duration::from_millis(500) {
                        let sync = o.last_sync.elapsed().as_secs_f64() >= self.rec.cfg.sync_secs;
                        let flushed = match &mut o.sink {
                            Sink::Flv(file) => file.flush(sync),
                            Sink::Mp4(file) => file.flush(sync),
                            Sink::Audio(file) => file.flush(sync),
                            Sink::Hls(_) => Ok(()),
                        };
                        if let Err(e) = flushed {
                            return self.fail(&mut open, i, e);
                        }
                        o.last_flush = Instant::now();
                        if sync {
                            o.last_sync = Instant::now();
                        }
                    }
                }
            }
        }
        for slot in open.iter_mut() {
            if let Some(o) = slot.take() {
                self.finish(o);
            }
        }
    }

    fn open(
        &self,
        format: RecordFormat,
        first: &Packet,
        has_video: bool,
        has_audio: bool,
        headers: &HeaderSet,
    ) -> std::io::Result<Open> {
        let file_id = short_id();
        // The wall-clock time of the first frame (it may be cached media from before the request), so a
        // callback's times are those of the media it describes.
        let start = wall_secs(first.received);
        let ext = format.extension();
        let mut rel = naming::render(
            &self.rec.cfg.template,
            &naming::NameParts {
                app: &self.key.app,
                stream: &self.key.name,
                record_id: &self.record_id,
                file_id: &file_id,
                ext,
                start,
            },
        )
        .map_err(std::io::Error::other)?;
        // Two files within one second would share a name: keep both.
        if self.rec.root.join(&rel).exists() {
            rel = rel.replace(&format!(".{ext}"), &format!("_{}.{ext}", &file_id[..8]));
        }
        let path = self.rec.root.join(&rel);
        let dts = first.frame.dts;
        let sink = match format {
            RecordFormat::Hls => {
                // MP3 has no header to announce it: the stream says what its audio is, even before a frame of
                // it reached this recording.
                let audio = self.stream.audio_codec();
                let video = headers.video.as_ref().map(|p| p.frame.codec);
                let mut h = HlsFile::create(
                    &path,
                    has_video,
                    has_audio || audio.is_some(),
                    audio,
                    video,
                    self.rec.segment_secs,
                    self.rec.cfg.hls_variant,
                )?;
                for hp in [&headers.video, &headers.audio].into_iter().flatten() {
                    h.push(hp)?;
                }
                Sink::Hls(Box::new(h))
            }
            RecordFormat::Mp4 | RecordFormat::M4a => {
                let video = headers.video.as_ref().filter(|_| has_video && format == RecordFormat::Mp4);
                let audio = headers.audio.as_ref().filter(|_| has_audio).map(|p| &p.frame);
                Sink::Mp4(Box::new(Mp4File::create(&path, video.map(|p| &p.frame), audio)?))
            }
            RecordFormat::Aac | RecordFormat::Mp3 => {
                let kind = if format == RecordFormat::Aac { AudioFormat::Adts } else { AudioFormat::Mp3 };
                let mut file = AudioFile::create(&path, kind)?;
                if let Some(h) = &headers.audio {
                    file.write(&h.frame)?;
                }
                Sink::Audio(file)
            }
            RecordFormat::Flv => {
                let mut file = FlvFile::create(&path, has_video, has_audio)?;
                for h in [&headers.video, &headers.audio].into_iter().flatten() {
                    let mut fr = h.frame.clone();
                    fr.dts = dts;
                    file.write(&fr)?;
                }
                Sink::Flv(file)
            }
        };
        let info = RecordInfo {
            event_type: 100,
            app: self.key.app.clone(),
            appname: self.key.app.clone(),
            stream_id: self.key.name.clone(),
            channel_id: self.key.name.clone(),
            file_id,
            file_format: format,
            task_id: self.task_id.clone(),
            record_id: self.record_id.clone(),
            start_time: start,
            end_time: start,
            duration: 0.0,
            file_size: 0,
            stream_param: self.param.clone(),
            video_url: format!("{}/{}", self.rec.base_url, rel),
            status: RecordStatus::Recording,
            path: rel.clone(),
            error: None,
        };
        let sidecar = sidecar_path(&path);
        write_json(&sidecar, &info)?;
        tracing::info!(stream = %self.key, file = %rel, "recording file opened");
        let (last_received, now) = (first.received, Instant::now());
        Ok(Open { sink, info, sidecar, first_dts: dts, last_received, last_flush: now, last_sync: now })
    }

    fn finish(&self, o: Open) {
        let Open { sink, mut info, sidecar, last_received, .. } = o;
        info.end_time = wall_secs(last_received).max(info.start_time);
        let result = match sink {
            Sink::Flv(file) => {
                let size = file.bytes;
                file.finish(33).map(|d| (d, size))
            }
            Sink::Mp4(m) => match (*m).close() {
                Ok(()) => {
                    // The rewrite copies the whole file: off this thread, so the recording (which may go on in
                    // a new fragment) never falls behind the hub's buffer while a long file is rewritten.
                    let rec = self.rec.clone();
                    let (key, record_id) = (self.key.clone(), self.record_id.clone());
                    self.rec.finalizer.run(Box::new(move || {
                        let result = mp4_file::finalize(&rec.root.join(&info.path));
                        rec.conclude(&key, &record_id, info, &sidecar, result);
                    }));
                    return;
                }
                Err(e) => Err(e),
            },
            Sink::Hls(h) => (*h).finish(),
            Sink::Audio(a) => a.finish(),
        };
        self.rec.conclude(&self.key, &self.record_id, info, &sidecar, result);
    }
}

impl Recorder {
    /// Records how a file ended: discarded when too short, else complete or failed, with its callback.
    fn conclude(
        &self,
        key: &StreamKey,
        record_id: &str,
        mut info: RecordInfo,
        sidecar: &Path,
        result: std::io::Result<(f64, u64)>,
    ) {
        match result {
            Ok((duration, size)) => {
                if duration < self.cfg.min_secs {
                    // Too short to be a recording (a failed push attempt): leave nothing behind.
                    remove_recording(&self.root, &info);
                    let _ = std::fs::remove_file(sidecar);
                    tracing::info!(file = %info.path, duration, "recording shorter than record.min_secs discarded");
                    return;
                }
                info.duration = duration;
                info.file_size = size;
                // The writer knows when the last frame arrived; a file repaired after a crash does not.
                if info.end_time <= info.start_time {
                    info.end_time = info.start_time + duration.round() as u64;
                }
                info.status = RecordStatus::Complete;
            }
            Err(e) => {
                info.status = RecordStatus::Failed;
                info.error = Some(if matches!(info.file_format, RecordFormat::Mp4 | RecordFormat::M4a) {
                    format!("finalizing failed ({e}); the fragmented MP4 is kept and plays")
                } else {
                    e.to_string()
                });
                self.failed_event(key, record_id, &info);
            }
        }
        self.store_info(sidecar, &info);
        tracing::info!(file = %info.path, duration = info.duration, status = %info.status, "recording file finished");
        self.callback(&info);
    }
}

impl Writer {
    /// A write failed (disk full, directory gone): this recording stops (the file that failed is marked failed,
    /// its other formats are closed as usual); the stream and other recordings go on.
    fn fail(&self, open: &mut [Option<Open>], failed: usize, e: std::io::Error) {
        tracing::error!(stream = %self.key, record_id = %self.record_id, error = %e, "recording failed");
        match open[failed].take() {
            Some(o) => {
                let mut info = o.info.clone();
                info.status = RecordStatus::Failed;
                info.error = Some(e.to_string());
                info.file_size = o.bytes();
                info.end_time = unix_now();
                info.duration = info.end_time.saturating_sub(info.start_time) as f64;
                self.rec.store_info(&o.sidecar, &info);
                self.rec.failed_event(&self.key, &self.record_id, &info);
                self.rec.callback(&info);
            }
            None => {
                let info = RecordInfo { error: Some(e.to_string()), ..self.blank_info(self.formats[failed]) };
                self.rec.failed_event(&self.key, &self.record_id, &info);
            }
        }
        for slot in open.iter_mut() {
            if let Some(o) = slot.take() {
                self.finish(o);
            }
        }
    }

    /// What is known of a file that could not even be created.
    fn blank_info(&self, format: RecordFormat) -> RecordInfo {
        RecordInfo {
            event_type: 100,
            app: self.key.app.clone(),
            appname: self.key.app.clone(),
            stream_id: self.key.name.clone(),
            channel_id: self.key.name.clone(),
            file_id: String::new(),
            file_format: format,
            task_id: self.task_id.clone(),
            record_id: self.record_id.clone(),
            start_time: unix_now(),
            end_time: unix_now(),
            duration: 0.0,
            file_size: 0,
            stream_param: self.param.clone(),
            video_url: String::new(),
            status: RecordStatus::Failed,
            path: String::new(),
            error: None,
        }
    }
}

/// Whether the sequence headers an MP4 needs are there: every track the stream has must be H.264 or AAC with
/// its configuration (an MP4 with the video missing would play as audio only).
fn mp4_ready(headers: &HeaderSet, has_video: bool, has_audio: bool) -> bool {
    let video = headers.video.as_ref().map(|p| &p.frame);
    let audio = headers.audio.as_ref().map(|p| &p.frame);
    let tracks = mp4_file::tracks_for(video.filter(|_| has_video), audio.filter(|_| has_audio));
    !tracks.is_empty() && (!has_video || video.is_some())
}

/// The sidecar of a recording file: `name.ext` → `name.ext.rec.json` (unique even when one push is
/// recorded in several formats under the same name).
fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".rec.json");
    PathBuf::from(s)
}

/// Deletes a recording's media: the file, and for HLS its segments too.
fn remove_recording(root: &Path, info: &RecordInfo) {
    let path = root.join(&info.path);
    if info.file_format == RecordFormat::Hls {
        if let Ok(text) = std::fs::read_to_string(&path) {
            for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
                let _ = std::fs::remove_file(path.with_file_name(l));
            }
            // fMP4: the initialization sections the segments name.
            for init in text.lines().filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"")?.strip_suffix('"')) {
                let _ = std::fs::remove_file(path.with_file_name(init));
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordFormat::*;

    const MP3: Codec = Codec::OtherAudio { flv_sound_byte: 0x2F };
    const PCMA: Codec = Codec::OtherAudio { flv_sound_byte: 0x72 };

    #[test]
    fn formats_read_the_rendition_of_the_codec_they_need() {
        let all = [Flv, Mp4, Hls, M4a, Aac, Mp3];
        // An AAC push: only MP3 files need a rendition (AAC → MP3).
        let p = plan_audio(&all, Some(Codec::Aac));
        assert_eq!(p.direct, [Flv, Mp4, Hls, M4a, Aac]);
        assert_eq!(p.rendition, Some((AudioNeed::Mp3, "mp3", vec![Mp3])));
        // An MP3 push: every AAC format reads the MP3 → AAC rendition.
        let p = plan_audio(&all, Some(MP3));
        assert_eq!(p.direct, [Flv, Hls, Mp3]);
        assert_eq!(p.rendition, Some((AudioNeed::Aac, "aac", vec![Mp4, M4a, Aac])));
        // No audio, or audio nothing transcodes here: everything takes the stream as it is.
        for audio in [None, Some(PCMA)] {
            let p = plan_audio(&all, audio);
            assert_eq!((p.direct.len(), p.rendition), (6, None));
        }
    }
}
