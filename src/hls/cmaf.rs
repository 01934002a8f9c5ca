//! CMAF cutting for fMP4 and Low-Latency HLS, pure: frames in (with the wall-clock time each arrived), events
//! out: initialization sections, parts (one `moof`+`mdat` each) and segment boundaries. The caller keeps
//! them and serves them; nothing here knows about sockets or clocks.
//!
//! Rules (RFC 8216bis):
//! - A segment opens on a video keyframe (on any audio frame when the stream has no video), so it decodes
//!   alone, and closes at the first keyframe once it holds `segment_ms` of media.
//! - A part closes before the frame that would carry it past `part_ms` (part durations stay within the
//!   advertised PART-TARGET, except a single frame longer than that); a part that opens on a keyframe is
//!   independent. Segment boundaries are part boundaries.
//! - A new codec configuration, or a timestamp jump, ends the segment and starts a new initialization section
//!   and timeline: the next segment is marked as a discontinuity.

use bytes::Bytes;

use crate::media::mp4::{tracks_for, Fragmenter, Handler};
use crate::media::{Codec, Frame, MediaKind};

/// A part: a `moof`+`mdat` of the open segment.
#[derive(Debug, Clone)]
pub struct Part {
    pub duration_ms: i64,
    /// It starts with a keyframe (or the stream has no video): a player may start decoding here.
    pub independent: bool,
    pub data: Bytes,
}

#[derive(Debug, Clone)]
pub enum CmafEvent {
    /// A new initialization section, numbered from 0: the segments that follow use it.
    Init { number: u32, data: Bytes },
    /// Segment `msn` opens: its first frame arrived at `wall_ms` (Unix ms); after a configuration change or a
    /// timestamp jump it is a discontinuity.
    SegmentStart { msn: u64, discontinuity: bool, init: u32, wall_ms: u64 },
    /// Part `index` of the open segment `msn` is complete.
    Part { msn: u64, index: u32, part: Part },
    /// Segment `msn` is complete: every one of its parts was sent.
    SegmentEnd { msn: u64, duration_ms: i64 },
}

struct Open {
    msn: u64,
    start_dts: i64,
    parts: u32,
}

/// The cutter of one stream.
pub struct CmafCutter {
    part_ms: i64,
    segment_ms: i64,
    /// The stream has video (from its announced tracks): segments open on keyframes.
    has_video: bool,
    has_audio: bool,
    video_cfg: Option<Frame>,
    audio_cfg: Option<Frame>,
    frag: Option<Fragmenter>,
    video_idx: Option<usize>,
    audio_idx: Option<usize>,
    /// The configurations the fragmenter was made for.
    made_for: (Option<Bytes>, Option<Bytes>),
    base_dts: i64,
    next_init: u32,
    next_msn: u64,
    open: Option<Open>,
    part_start: i64,
    part_independent: bool,
    last_dts: Option<i64>,
    /// The newest timestamp of each track (video, audio) in the current timeline, for jump detection.
    track_last: [Option<i64>; 2],
    /// The longest of the last few intervals between frames that decide part boundaries (video, or audio
    /// without video): a part closes before the frame that this much more would carry past `part_ms`, so
    /// timestamp jitter (33, 34, 33 ms …) never makes a part longer than PART-TARGET.
    interval: i64,
    recent: [i64; 8],
    recent_at: usize,
    discontinuity: bool,
    /// Frames of codecs fMP4 here does not carry (MP3, G.711 …) were seen: said once by the caller.
    pub skipped_codec: Option<Codec>,
}

impl CmafCutter {
    pub fn new(part_ms: i64, segment_ms: i64, has_video: bool, has_audio: bool) -> Self {
        Self {
            part_ms: part_ms.max(1),
            segment_ms: segment_ms.max(1),
            has_video,
            has_audio,
            video_cfg: None,
            audio_cfg: None,
            frag: None,
            video_idx: None,
            audio_idx: None,
            made_for: (None, None),
            base_dts: 0,
            next_init: 0,
            next_msn: 0,
            open: None,
            part_start: 0,
            part_independent: false,
            last_dts: None,
            track_last: [None, None],
            interval: 33,
            recent: [0; 8],
            recent_at: 0,
            discontinuity: false,
            skipped_codec: None,
        }
    }

    /// The stream's tracks, once known (before any frame): with video, segments open on its keyframes and
    /// only parts that start with one are independent.
    pub fn set_tracks(&mut self, has_video: bool, has_audio: bool) {
        self.has_video = has_video;
        self.has_audio = has_audio;
    }

    /// Whether segments open on video keyframes (the stream has video).
    pub fn has_video(&self) -> bool {
        self.has_video
    }

    /// The newest timestamp of the track that decides the cutting (video, or audio without video), once a
    /// segment is open: what other tracks' frames may be interleaved up to.
    pub fn newest_dts(&self) -> Option<i64> {
        self.open.as_ref().and(self.last_dts)
    }

    /// The msn and part index the next part will have (what a preload hint names), once a segment is open.
    pub fn next_part(&self) -> Option<(u64, u32)> {
        self.open.as_ref().map(|o| (o.msn, o.parts))
    }

    /// One frame from the hub; `wall_ms`: when it arrived (Unix ms).
    pub fn push(&mut self, f: &Frame, wall_ms: u64) -> Vec<CmafEvent> {
        let mut out = Vec::new();
        if f.kind == MediaKind::Data {
            return out;
        }
        if f.config {
            self.configure(f.clone(), &mut out);
            return out;
        }
        // Opus carries no configuration record: the first packet stands for one (and a switch from AAC to
        // Opus is a configuration change like any other).
        if f.kind == MediaKind::Audio
            && f.codec == Codec::Opus
            && self.audio_cfg.as_ref().is_none_or(|c| c.codec != Codec::Opus)
        {
            self.configure(opus_config(), &mut out);
        }
        let supported = match f.kind {
            MediaKind::Video => matches!(f.codec, Codec::H264 | Codec::H265),
            _ => matches!(f.codec, Codec::Aac | Codec::Opus),
        };
        if !supported {
            self.skipped_codec.get_or_insert(f.codec);
            return out;
        }
        // A timestamp jump (a resumed publish on a new timeline, an encoder restart): a new timeline here too.
        // Judged per track: two readers' batches (a WHIP stream's video and its Opus rendition) may arrive a
        // second or more apart on a busy machine without anything having jumped.
        let slot = usize::from(f.kind == MediaKind::Audio);
        if let (Some(last), true) = (self.track_last[slot], self.frag.is_some()) {
            if f.dts < last - 1000 || f.dts > last + 10_000 {
                self.close_segment(self.last_dts.unwrap_or(last), &mut out);
                self.frag = None;
                self.discontinuity = true;
                self.track_last = [None, None];
            }
        }
        let decides = match f.kind {
            MediaKind::Video => true,
            _ => !self.has_video,
        };
        let opens = decides && (f.kind != MediaKind::Video || f.keyframe);
        if self.frag.is_none() {
            if !opens || !self.make_fragmenter(&mut out) {
                return out;
            }
            self.base_dts = f.dts;
            self.last_dts = None;
            self.track_last = [None, None];
        }
        if f.dts < self.base_dts {
            return out;
        }
        self.track_last[slot] = Some(self.track_last[slot].map_or(f.dts, |l| l.max(f.dts)));
        // Boundaries are decided before the frame joins: it opens the next part (or segment).
        if decides {
            if let Some(open) = &self.open {
                let seg_due = opens && f.dts - open.start_dts >= self.segment_ms;
                let part_due = f.dts > self.part_start && f.dts + self.interval - self.part_start > self.part_ms;
                if seg_due {
                    self.push_sample(f);
                    self.close_part(f.dts, &mut out);
                    self.end_segment(f.dts, &mut out);
                } else if part_due {
                    self.push_sample(f);
                    self.close_part(f.dts, &mut out);
                    self.part_start = f.dts;
                    self.part_independent = f.kind != MediaKind::Video || f.keyframe;
                    self.note_interval(f.dts);
                    return out;
                } else {
                    self.push_sample(f);
                    self.note_interval(f.dts);
                    return out;
                }
            } else {
                self.push_sample(f);
            }
            // A segment opens here (the first, or the one after the segment just closed).
            if self.open.is_none() {
                let msn = self.next_msn;
                self.next_msn += 1;
                self.open = Some(Open { msn, start_dts: f.dts, parts: 0 });
                self.part_start = f.dts;
                self.part_independent = true;
                out.push(CmafEvent::SegmentStart {
                    msn,
                    discontinuity: std::mem::take(&mut self.discontinuity),
                    init: self.next_init - 1,
                    wall_ms,
                });
            }
            self.note_interval(f.dts);
        } else if self.open.is_some() {
            self.push_sample(f);
        }
        out
    }

    /// A track's configuration (SPS/PPS, AAC's, Opus's stand-in).
    fn configure(&mut self, f: Frame, out: &mut Vec<CmafEvent>) {
        // A track the initialization section lacks (its configuration came after the first keyframe) is a
        // change too: without a new one its frames would have nowhere to go.
        // And a track the reader did not know of when it joined (a WHIP stream's video can start after its
        // audio) is one from now on: with video, segments open on its keyframes.
        let missing = match f.kind {
            MediaKind::Video => {
                self.has_video = true;
                self.video_idx.is_none()
            }
            _ => {
                self.has_audio = true;
                self.audio_idx.is_none()
            }
        };
        let slot = if f.kind == MediaKind::Video { &mut self.video_cfg } else { &mut self.audio_cfg };
        let changed = missing || slot.as_ref().is_some_and(|c| c.payload != f.payload || c.codec != f.codec);
        *slot = Some(f);
        if changed && self.frag.is_some() {
            // New SPS/PPS or audio configuration: a new initialization section from the next keyframe.
            self.close_segment(self.last_dts.unwrap_or(0), out);
            self.frag = None;
            self.discontinuity = true;
        }
    }

    /// The next segment starts a new timeline (a resumed push): the open one closes now, and a new
    /// initialization section and a discontinuity come with the next keyframe.
    pub fn mark_discontinuity(&mut self) -> Vec<CmafEvent> {
        let mut out = Vec::new();
        let end = self.last_dts.map_or(0, |d| d + self.interval);
        self.close_segment(end, &mut out);
        self.frag = None;
        self.discontinuity = true;
        out
    }

    /// The stream ended: the open part and segment close with what they have.
    pub fn finish(&mut self) -> Vec<CmafEvent> {
        let mut out = Vec::new();
        let end = self.last_dts.map_or(0, |d| d + self.interval);
        self.close_segment(end, &mut out);
        out
    }

    fn note_interval(&mut self, dts: i64) {
        if let Some(last) = self.last_dts {
            if dts > last {
                self.recent[self.recent_at % self.recent.len()] = (dts - last).min(1000);
                self.recent_at += 1;
                self.interval = self.recent.iter().copied().max().unwrap_or(33);
            }
        }
        self.last_dts = Some(self.last_dts.map_or(dts, |l| l.max(dts)));
    }

    fn make_fragmenter(&mut self, out: &mut Vec<CmafEvent>) -> bool {
        // Wait for the configurations the announced tracks need.
        let video = self.video_cfg.as_ref().filter(|v| matches!(v.codec, Codec::H264 | Codec::H265));
        let audio = self.audio_cfg.as_ref().filter(|a| matches!(a.codec, Codec::Aac | Codec::Opus));
        if (self.has_video && video.is_none()) || (self.has_audio && audio.is_none() && !self.has_video) {
            return false;
        }
        let tracks = tracks_for(video, audio);
        if tracks.is_empty() {
            return false;
        }
        self.video_idx = tracks.iter().position(|t| t.handler == Handler::Video);
        self.audio_idx = tracks.iter().position(|t| t.handler == Handler::Audio);
        self.made_for = (video.map(|v| v.payload.clone()), audio.map(|a| a.payload.clone()));
        let frag = Fragmenter::new(tracks);
        out.push(CmafEvent::Init { number: self.next_init, data: Bytes::from(frag.init()) });
        self.next_init += 1;
        self.frag = Some(frag);
        true
    }

    fn push_sample(&mut self, f: &Frame) {
        let idx = match f.kind {
            MediaKind::Video => self.video_idx,
            _ => self.audio_idx,
        };
        let (Some(frag), Some(idx)) = (self.frag.as_mut(), idx) else { return };
        let sync = f.kind != MediaKind::Video || f.keyframe;
        frag.push(idx, f.dts - self.base_dts, f.cts, sync, f.payload.clone());
    }

    /// Closes the open part at `end_dts` (the frame just pushed, which opens the next one, stays pending).
    fn close_part(&mut self, end_dts: i64, out: &mut Vec<CmafEvent>) {
        self.take_part(end_dts, false, out);
    }

    fn take_part(&mut self, end_dts: i64, last: bool, out: &mut Vec<CmafEvent>) {
        let (Some(open), Some(frag)) = (self.open.as_mut(), self.frag.as_mut()) else { return };
        let Some(chunks) = frag.fragment(last) else { return };
        let len = chunks.iter().map(Bytes::len).sum();
        let mut data = Vec::with_capacity(len);
        chunks.iter().for_each(|c| data.extend_from_slice(c));
        let part = Part {
            duration_ms: (end_dts - self.part_start).max(1),
            independent: self.part_independent,
            data: Bytes::from(data),
        };
        out.push(CmafEvent::Part { msn: open.msn, index: open.parts, part });
        open.parts += 1;
    }

    fn end_segment(&mut self, end_dts: i64, out: &mut Vec<CmafEvent>) {
        if let Some(open) = self.open.take() {
            out.push(CmafEvent::SegmentEnd { msn: open.msn, duration_ms: (end_dts - open.start_dts).max(1) });
        }
    }

    /// Ends the open segment with everything pending (a new timeline or configuration follows).
    fn close_segment(&mut self, end_dts: i64, out: &mut Vec<CmafEvent>) {
        if self.open.is_some() {
            self.take_part(end_dts, true, out);
            self.end_segment(end_dts, out);
        }
    }
}

/// Opus's configuration stand-in: WebRTC's Opus is declared stereo (`opus/48000/2`), and a decoder set up for
/// two channels plays mono packets too. Pushed ahead of the first frame when Opus is expected, so the first
/// initialization section has the track.
pub fn opus_config() -> Frame {
    Frame::config(MediaKind::Audio, Codec::Opus, Bytes::from_static(&[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc_config() -> Frame {
        // A 64x64 Baseline SPS and a PPS in an AVCDecoderConfigurationRecord.
        let sps = [
            0x67, 0x42, 0xc0, 0x0a, 0xd9, 0x08, 0x84, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xc8, 0x3c,
            0x48, 0x99, 0x20,
        ];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut r = vec![1, 0x42, 0xc0, 0x0a, 0xff, 0xe1];
        r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        r.extend_from_slice(&sps);
        r.push(1);
        r.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        r.extend_from_slice(&pps);
        Frame::config(MediaKind::Video, Codec::H264, Bytes::from(r))
    }

    fn aac_config() -> Frame {
        Frame::config(MediaKind::Audio, Codec::Aac, Bytes::from_static(&[0x12, 0x10]))
    }

    fn video(dts: i64, key: bool) -> Frame {
        Frame {
            kind: MediaKind::Video,
            codec: Codec::H264,
            dts,
            cts: 0,
            keyframe: key,
            config: false,
            payload: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]),
        }
    }

    fn audio(dts: i64) -> Frame {
        Frame {
            kind: MediaKind::Audio,
            codec: Codec::Aac,
            dts,
            cts: 0,
            keyframe: false,
            config: false,
            payload: Bytes::from_static(&[0x21, 0x10]),
        }
    }

    /// 30 fps video with a keyframe every `gop` frames and 44.1 kHz AAC, for `secs`.
    fn run(c: &mut CmafCutter, secs: i64, gop: i64) -> Vec<CmafEvent> {
        let mut out = c.push(&avc_config(), 0);
        out.extend(c.push(&aac_config(), 0));
        let (mut v, mut a) = (0i64, 0i64);
        while v < secs * 30 {
            let vd = v * 1000 / 30;
            while a * 1024 * 1000 / 44100 <= vd {
                out.extend(c.push(&audio(a * 1024 * 1000 / 44100), 1_000 + vd as u64));
                a += 1;
            }
            out.extend(c.push(&video(vd, v % gop == 0), 1_000 + vd as u64));
            v += 1;
        }
        out
    }

    #[test]
    fn segments_open_on_keyframes_and_parts_stay_within_their_target() {
        let mut c = CmafCutter::new(200, 2000, true, true);
        let ev = run(&mut c, 10, 60);
        assert!(matches!(ev[0], CmafEvent::Init { number: 0, .. }));
        let starts: Vec<_> = ev
            .iter()
            .filter_map(|e| if let CmafEvent::SegmentStart { msn, .. } = e { Some(*msn) } else { None })
            .collect();
        assert_eq!(starts, [0, 1, 2, 3, 4]);
        let ends: Vec<_> = ev
            .iter()
            .filter_map(|e| {
                if let CmafEvent::SegmentEnd { msn, duration_ms } = e {
                    Some((*msn, *duration_ms))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(ends, [(0, 2000), (1, 2000), (2, 2000), (3, 2000)]);
        let mut per_segment = std::collections::BTreeMap::new();
        for e in &ev {
            if let CmafEvent::Part { msn, index, part } = e {
                assert!(part.duration_ms <= 200, "part {msn}.{index}: {} ms", part.duration_ms);
                assert_eq!(part.independent, *index == 0, "part {msn}.{index}");
                assert_eq!(&part.data[4..8], b"moof");
                let parts: &mut Vec<i64> = per_segment.entry(*msn).or_default();
                assert_eq!(parts.len() as u32, *index, "parts in order");
                parts.push(part.duration_ms);
            }
        }
        // Parts add up to their segment.
        for (msn, d) in ends {
            assert_eq!(per_segment[&msn].iter().sum::<i64>(), d, "segment {msn}");
        }
        assert_eq!(c.next_part(), Some((4, per_segment[&4].len() as u32)));
    }

    #[test]
    fn parts_of_24_fps_video_end_before_the_frame_that_would_pass_the_target() {
        let mut c = CmafCutter::new(200, 2000, true, false);
        c.push(&avc_config(), 0);
        let mut parts = Vec::new();
        for i in 0..96 {
            for e in c.push(&video(i * 1000 / 24, i % 48 == 0), 0) {
                if let CmafEvent::Part { part, .. } = e {
                    parts.push(part.duration_ms);
                }
            }
        }
        assert!(parts.len() > 10);
        assert!(parts.iter().all(|d| *d <= 200 && *d >= 150), "{parts:?}");
    }

    #[test]
    fn a_new_configuration_or_a_jump_starts_a_new_init_and_a_discontinuity() {
        let mut c = CmafCutter::new(200, 2000, true, true);
        let mut ev = run(&mut c, 3, 30);
        let mut other = avc_config();
        let mut p = other.payload.to_vec();
        p[1] = 0x4d;
        other.payload = Bytes::from(p);
        ev.extend(c.push(&other, 0));
        ev.extend(c.push(&video(3100, true), 0));
        // A jump back in time (a publisher restarted its clock).
        ev.extend(c.push(&video(3133, false), 0));
        ev.extend(c.push(&video(100, true), 0));
        let inits: Vec<u32> = ev
            .iter()
            .filter_map(|e| if let CmafEvent::Init { number, .. } = e { Some(*number) } else { None })
            .collect();
        assert_eq!(inits, [0, 1, 2]);
        let starts: Vec<(bool, u32)> = ev
            .iter()
            .filter_map(|e| {
                if let CmafEvent::SegmentStart { discontinuity, init, .. } = e {
                    Some((*discontinuity, *init))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(starts, [(false, 0), (false, 0), (true, 1), (true, 2)]);
    }

    #[test]
    fn audio_only_streams_cut_on_audio_frames() {
        let mut c = CmafCutter::new(200, 1000, false, true);
        c.push(&aac_config(), 0);
        let mut ends = Vec::new();
        let mut parts = 0;
        for a in 0..200 {
            for e in c.push(&audio(a * 1024 * 1000 / 44100), 0) {
                match e {
                    CmafEvent::SegmentEnd { duration_ms, .. } => ends.push(duration_ms),
                    CmafEvent::Part { part, .. } => {
                        assert!(part.independent && part.duration_ms <= 200);
                        parts += 1;
                    }
                    _ => {}
                }
            }
        }
        assert!(ends.len() >= 3 && ends.iter().all(|d| (1000..1100).contains(d)), "{ends:?}");
        assert!(parts >= ends.len() * 4);
        let last = c.finish();
        assert!(matches!(last.last(), Some(CmafEvent::SegmentEnd { .. })));
    }

    #[test]
    fn nothing_comes_out_before_the_first_keyframe_and_unknown_codecs_are_named() {
        let mut c = CmafCutter::new(200, 2000, true, true);
        c.push(&avc_config(), 0);
        c.push(&aac_config(), 0);
        assert!(c.push(&video(0, false), 0).is_empty());
        assert!(c.push(&audio(10), 0).is_empty());
        let mp3 = Frame { codec: Codec::OtherAudio { flv_sound_byte: 0x2f }, ..audio(20) };
        assert!(c.push(&mp3, 0).is_empty());
        assert_eq!(c.skipped_codec, Some(Codec::OtherAudio { flv_sound_byte: 0x2f }));
        assert!(c.push(&video(33, true), 5).iter().any(|e| matches!(e, CmafEvent::SegmentStart { wall_ms: 5, .. })));
    }

    fn opus(dts: i64) -> Frame {
        Frame { codec: Codec::Opus, payload: Bytes::from_static(&[0xfc, 0xff, 0xfe]), ..audio(dts) }
    }

    /// WHIP's Opus (20 ms packets, arriving from its own rendition beside the stream's video) goes into the
    /// segments as an `Opus` track, and a switch back to AAC is a new initialization section.
    #[test]
    fn opus_is_a_track_of_its_own_and_a_switch_to_aac_starts_a_new_init() {
        let mut c = CmafCutter::new(200, 1000, true, true);
        // As the segmenter does when it reads a rendition's Opus: the track is announced before any frame.
        let mut ev = c.push(&avc_config(), 0);
        ev.extend(c.push(&opus_config(), 0));
        for v in 0..60i64 {
            let vd = v * 1000 / 30;
            ev.extend(c.push(&video(vd, v % 30 == 0), 0));
            // Audio arrives in bursts, a little behind the video: its samples go into whatever part is open.
            if v % 3 == 2 {
                for k in 0..5 {
                    let ad = (v - 2) * 1000 / 30 + k * 20;
                    if ad / 20 * 20 == ad {
                        ev.extend(c.push(&opus(ad), 0));
                    }
                }
            }
        }
        let init = ev.iter().find_map(|e| if let CmafEvent::Init { data, .. } = e { Some(data.clone()) } else { None });
        let init = init.expect("an init section");
        let has = |b: &[u8], tag: &[u8]| b.windows(tag.len()).any(|w| w == tag);
        assert!(has(&init, b"avc1") && has(&init, b"Opus") && has(&init, b"dOps") && !has(&init, b"mp4a"));
        // dOps: version 0, 2 channels, pre-skip 0, 48 kHz, gain 0, mapping family 0.
        let at = init.windows(4).position(|w| w == b"dOps").unwrap() + 4;
        assert_eq!(&init[at..at + 11], &[0, 2, 0, 0, 0, 0, 0xbb, 0x80, 0, 0, 0]);
        let parts: Vec<_> =
            ev.iter().filter_map(|e| if let CmafEvent::Part { part, .. } = e { Some(part) } else { None }).collect();
        assert!(parts.len() >= 4);
        // Two tracks' fragments: the Opus one's samples are 960 ticks (20 ms at 48 kHz).
        let with_audio = parts.iter().filter(|p| p.data.windows(4).filter(|w| w == b"traf").count() == 2).count();
        assert!(with_audio >= parts.len() / 2, "{with_audio} of {} parts carry both tracks", parts.len());
        // The rendition ends and the stream's AAC takes over: a new init section at the next keyframe.
        let mut after = c.push(&aac_config(), 0);
        after.extend(c.push(&audio(2000), 0));
        after.extend(c.push(&video(2000, true), 0));
        let init2 = after.iter().find_map(|e| {
            if let CmafEvent::Init { number, data } = e {
                Some((*number, data.clone()))
            } else {
                None
            }
        });
        let (n, init2) = init2.expect("a second init section");
        assert_eq!(n, 1);
        assert!(has(&init2, b"mp4a") && !has(&init2, b"Opus"));
        assert!(after.iter().any(|e| matches!(e, CmafEvent::SegmentStart { discontinuity: true, .. })));
    }

    /// An audio configuration that comes after the first keyframe (a WHIP stream's Opus rendition starts a
    /// moment after its video) gets a new initialization section with the track at the next keyframe, not
    /// frames with nowhere to go.
    #[test]
    fn a_late_audio_configuration_starts_a_new_init_with_the_track() {
        let mut c = CmafCutter::new(200, 1000, true, true);
        let mut ev = c.push(&avc_config(), 0);
        ev.extend(c.push(&video(0, true), 0));
        ev.extend(c.push(&video(33, false), 0));
        ev.extend(c.push(&aac_config(), 0));
        for v in 2..40i64 {
            ev.extend(c.push(&audio(v * 33), 0));
            ev.extend(c.push(&video(v * 33, v % 30 == 0), 0));
        }
        let inits: Vec<_> = ev
            .iter()
            .filter_map(|e| if let CmafEvent::Init { data, .. } = e { Some(data.clone()) } else { None })
            .collect();
        assert_eq!(inits.len(), 2);
        let has = |b: &[u8], tag: &[u8]| b.windows(tag.len()).any(|w| w == tag);
        assert!(!has(&inits[0], b"mp4a") && has(&inits[1], b"mp4a") && has(&inits[1], b"avc1"));
    }

    /// A reader that joined before the stream's video existed (WHIP: audio flows while the browser's first
    /// keyframe is on its way) learns of the video from its configuration: from the next keyframe, segments
    /// open on keyframes and only keyframe parts are independent.
    #[test]
    fn video_that_starts_after_the_audio_takes_over_the_cutting() {
        let mut c = CmafCutter::new(200, 1000, false, true);
        let mut ev = c.push(&aac_config(), 0);
        for a in 0..20i64 {
            ev.extend(c.push(&audio(a * 23), 0));
        }
        ev.extend(c.push(&avc_config(), 0));
        let before = ev.len();
        for v in 14..120i64 {
            ev.extend(c.push(&audio(v * 33), 0));
            ev.extend(c.push(&video(v * 33, v % 30 == 0), 0));
        }
        let after = &ev[before..];
        let init =
            after.iter().find_map(|e| if let CmafEvent::Init { data, .. } = e { Some(data.clone()) } else { None });
        let has = |b: &[u8], tag: &[u8]| b.windows(tag.len()).any(|w| w == tag);
        assert!(init.is_some_and(|i| has(&i, b"avc1") && has(&i, b"mp4a")));
        let starts: Vec<u64> = after
            .iter()
            .filter_map(|e| if let CmafEvent::SegmentStart { msn, .. } = e { Some(*msn) } else { None })
            .collect();
        assert!(starts.len() >= 2, "{starts:?}");
        // Independent: the parts that open on the three keyframes (30, 60, 90), and no other.
        let independent: Vec<(u64, u32)> = after
            .iter()
            .filter_map(|e| match e {
                CmafEvent::Part { msn, index, part } if part.independent => Some((*msn, *index)),
                _ => None,
            })
            .collect();
        assert_eq!(independent.len(), 3, "{independent:?}");
        assert!(independent.iter().filter(|(_, i)| *i == 0).count() == starts.len(), "{independent:?}");
    }

    /// Two readers' batches (a WHIP stream's video and its Opus rendition) can reach the cutter well over a
    /// second apart on a busy machine: that is no timestamp jump, and no new timeline starts.
    #[test]
    fn audio_a_second_and_a_half_behind_the_video_is_no_jump() {
        let mut c = CmafCutter::new(200, 1000, true, true);
        let mut ev = c.push(&avc_config(), 0);
        ev.extend(c.push(&opus_config(), 0));
        for v in 0..150i64 {
            ev.extend(c.push(&video(v * 33, v % 30 == 0), 0));
            // The audio of 1.5 s ago, in 20 ms packets.
            let behind = v * 33 - 1500;
            if behind >= 0 {
                ev.extend(c.push(&opus(behind / 20 * 20), 0));
            }
        }
        let inits = ev.iter().filter(|e| matches!(e, CmafEvent::Init { .. })).count();
        let jumps = ev.iter().filter(|e| matches!(e, CmafEvent::SegmentStart { discontinuity: true, .. })).count();
        assert_eq!((inits, jumps), (1, 0));
    }
}
