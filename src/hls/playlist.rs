//! Media playlists for CMAF HLS (fMP4 and Low-Latency), pure: a description of the window in, the text out.
//!
//! Low-Latency (RFC 8216bis): parts are listed for the segments within three target durations of the end
//! (older ones only as whole segments), the open segment by its parts alone, then a preload hint naming the
//! part that comes next. A delta update (`_HLS_skip=YES`) replaces the complete segments that end more than
//! CAN-SKIP-UNTIL (six target durations) before the end of the playlist with one EXT-X-SKIP.

use std::fmt::Write;

use crate::timefmt::rfc3339_ms;

/// A part as a playlist lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartMeta {
    pub duration_ms: i64,
    pub independent: bool,
}

/// A segment of the window.
#[derive(Debug, Clone)]
pub struct SegMeta<'a> {
    pub msn: u64,
    /// `None`: the open segment (listed by its parts only).
    pub duration_ms: Option<i64>,
    pub discontinuity: bool,
    /// The number of its initialization section.
    pub init: u32,
    /// When its first frame arrived (Unix ms).
    pub wall_ms: u64,
    /// Its parts, when they are still held (`[]` for a segment whose parts were dropped).
    pub parts: &'a [PartMeta],
}

/// Everything a playlist says.
#[derive(Debug, Clone)]
pub struct Listing<'a> {
    /// What every URI starts with: `{stream}/{instance}-`.
    pub base: &'a str,
    /// Appended to every URI (`?txSecret=…` of the playlist request), or empty.
    pub query: &'a str,
    pub low_latency: bool,
    pub part_target_ms: i64,
    /// The configured segment length (the target duration is at least this).
    pub segment_ms: i64,
    /// Oldest first; in Low-Latency the last may be open.
    pub segments: &'a [SegMeta<'a>],
    /// Discontinuities before the first segment listed.
    pub discontinuity_seq: u64,
    pub ended: bool,
    /// A delta update was asked for (`_HLS_skip=YES`).
    pub skip: bool,
    /// The part that comes next: (msn, index).
    pub preload: Option<(u64, u32)>,
}

/// EXT-X-TARGETDURATION: the longest complete segment, rounded up, and at least the configured length.
pub fn target_secs(segments: &[SegMeta<'_>], segment_ms: i64) -> u64 {
    let longest = segments.iter().filter_map(|s| s.duration_ms).max().unwrap_or(0).max(segment_ms);
    ((longest + 999) / 1000) as u64
}

fn secs(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// How many of the oldest segments a delta update leaves out.
pub fn skippable(l: &Listing<'_>) -> usize {
    if !l.low_latency || !l.skip {
        return 0;
    }
    let skip_until_ms = 6 * 1000 * target_secs(l.segments, l.segment_ms) as i64;
    let total: i64 = l.segments.iter().map(|s| s.duration_ms.unwrap_or_else(|| parts_ms(s))).sum();
    let mut end = 0i64;
    let mut n = 0;
    for s in l.segments {
        let Some(d) = s.duration_ms else { break };
        end += d;
        // A segment may be skipped when all of it is more than CAN-SKIP-UNTIL before the playlist's end, and
        // it is listed as a whole (no parts).
        if total - end > skip_until_ms && s.parts.is_empty() {
            n += 1;
        } else {
            break;
        }
    }
    n
}

fn parts_ms(s: &SegMeta<'_>) -> i64 {
    s.parts.iter().map(|p| p.duration_ms).sum()
}

pub fn render(l: &Listing<'_>) -> String {
    let target = target_secs(l.segments, l.segment_ms);
    let first = l.segments.first().map_or(0, |s| s.msn);
    let mut o = String::with_capacity(256 + l.segments.len() * 64);
    let version = if l.low_latency { 9 } else { 7 };
    let _ = writeln!(o, "#EXTM3U\n#EXT-X-VERSION:{version}\n#EXT-X-TARGETDURATION:{target}");
    if l.low_latency {
        let part = secs(l.part_target_ms);
        // PART-HOLD-BACK: three parts, as the spec recommends (at least two are required).
        let hold = secs(3 * l.part_target_ms);
        let skip_until = 6 * target;
        let _ = writeln!(
            o,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={hold},CAN-SKIP-UNTIL={skip_until}.0\n\
             #EXT-X-PART-INF:PART-TARGET={part}"
        );
    }
    let _ = writeln!(o, "#EXT-X-MEDIA-SEQUENCE:{first}");
    if l.discontinuity_seq > 0 {
        let _ = writeln!(o, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", l.discontinuity_seq);
    }
    let skipped = skippable(l);
    if skipped > 0 {
        let _ = writeln!(o, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    let q = l.query;
    let base = l.base;
    // Parts are listed for the segments that start within three target durations of the end.
    let total: i64 = l.segments.iter().map(|s| s.duration_ms.unwrap_or_else(|| parts_ms(s))).sum();
    let mut start = 0i64;
    let mut init = None;
    for (i, s) in l.segments.iter().enumerate() {
        let seg_start = start;
        start += s.duration_ms.unwrap_or_else(|| parts_ms(s));
        if i < skipped {
            init = Some(s.init);
            continue;
        }
        if s.discontinuity {
            let _ = writeln!(o, "#EXT-X-DISCONTINUITY");
        }
        if init != Some(s.init) || i == skipped {
            let _ = writeln!(o, "#EXT-X-MAP:URI=\"{base}init{}.mp4{q}\"", s.init);
            init = Some(s.init);
        }
        if i == skipped || s.discontinuity {
            let _ = writeln!(o, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339_ms(s.wall_ms));
        }
        if l.low_latency && (total - seg_start <= 3 * 1000 * target as i64 || s.duration_ms.is_none()) {
            for (n, p) in s.parts.iter().enumerate() {
                let ind = if p.independent { ",INDEPENDENT=YES" } else { "" };
                let d = secs(p.duration_ms);
                let _ = writeln!(o, "#EXT-X-PART:DURATION={d},URI=\"{base}{}.{n}.m4s{q}\"{ind}", s.msn);
            }
        }
        if let Some(d) = s.duration_ms {
            let _ = writeln!(o, "#EXTINF:{},\n{base}{}.m4s{q}", secs(d), s.msn);
        }
    }
    if l.ended {
        let _ = writeln!(o, "#EXT-X-ENDLIST");
    } else if let (true, Some((msn, part))) = (l.low_latency, l.preload) {
        let _ = writeln!(o, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}{msn}.{part}.m4s{q}\"");
    }
    o
}

/// A blocking playlist request's `_HLS_msn`, `_HLS_part` and `_HLS_skip`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blocking {
    pub msn: Option<u64>,
    pub part: Option<u32>,
    pub skip: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockingError {
    #[error("{0}={1:?} is not a non-negative integer")]
    NotANumber(&'static str, String),
    #[error("_HLS_part needs _HLS_msn")]
    PartWithoutMsn,
    #[error("_HLS_skip={0:?}: only YES (or v2) is defined")]
    BadSkip(String),
}

impl Blocking {
    pub fn parse(query: &[(String, String)]) -> Result<Self, BlockingError> {
        let get = |k: &str| crate::names::query_get(query, k);
        let num = |k: &'static str| -> Result<Option<u64>, BlockingError> {
            get(k).map(|v| v.parse::<u64>().map_err(|_| BlockingError::NotANumber(k, v.to_owned()))).transpose()
        };
        let msn = num("_HLS_msn")?;
        let part = num("_HLS_part")?
            .map(|p| u32::try_from(p).map_err(|_| BlockingError::NotANumber("_HLS_part", p.to_string())))
            .transpose()?;
        if part.is_some() && msn.is_none() {
            return Err(BlockingError::PartWithoutMsn);
        }
        let skip = match get("_HLS_skip") {
            None => false,
            Some("YES" | "v2") => true,
            Some(v) => return Err(BlockingError::BadSkip(v.to_owned())),
        };
        Ok(Self { msn, part, skip })
    }

    /// The playlist query without the blocking parameters: what the URIs in it carry (a signature).
    pub fn strip(query: &str) -> String {
        query.split('&').filter(|p| !p.is_empty() && !p.starts_with("_HLS_")).collect::<Vec<_>>().join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PartMeta = PartMeta { duration_ms: 200, independent: false };
    const PI: PartMeta = PartMeta { duration_ms: 200, independent: true };
    static PARTS: [PartMeta; 10] = [PI, P, P, P, P, PI, P, P, P, P];

    fn seg(msn: u64, complete: bool, parts: &'static [PartMeta]) -> SegMeta<'static> {
        SegMeta {
            msn,
            duration_ms: complete.then_some(2000),
            discontinuity: false,
            init: 0,
            wall_ms: 1_796_510_000_000 + msn * 2000,
            parts,
        }
    }

    fn listing<'a>(segments: &'a [SegMeta<'a>], skip: bool) -> Listing<'a> {
        Listing {
            base: "cam/abcd-",
            query: "",
            low_latency: true,
            part_target_ms: 200,
            segment_ms: 2000,
            segments,
            discontinuity_seq: 0,
            ended: false,
            skip,
            preload: Some((segments.last().unwrap().msn, 3)),
        }
    }

    /// The rules a player checks: every part within PART-TARGET, parts only before their segment's EXTINF,
    /// msn arithmetic, the preload hint naming the part after the last one listed.
    fn check(text: &str) {
        let mut part_target = None;
        let mut msn = None;
        let mut parts_since_extinf = 0;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:PART-TARGET=") {
                part_target = Some(v.parse::<f64>().unwrap());
            }
            if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                msn = Some(v.parse::<u64>().unwrap());
            }
            if let Some(attrs) = line.strip_prefix("#EXT-X-PART:") {
                let d: f64 = attrs.split(',').find_map(|a| a.strip_prefix("DURATION=")).unwrap().parse().unwrap();
                assert!(d <= part_target.unwrap() + 1e-9, "{line}");
                parts_since_extinf += 1;
            }
            if line.ends_with(".m4s") && !line.starts_with('#') {
                let n: u64 = line.rsplit('-').next().unwrap().trim_end_matches(".m4s").parse().unwrap();
                assert_eq!(Some(n), msn, "segments numbered from EXT-X-MEDIA-SEQUENCE on");
                msn = msn.map(|m| m + 1);
                parts_since_extinf = 0;
            }
        }
        let _ = parts_since_extinf;
    }

    #[test]
    fn a_low_latency_playlist_lists_recent_parts_and_hints_the_next() {
        let segs = [seg(10, true, &[]), seg(11, true, &PARTS), seg(12, true, &PARTS), seg(13, false, &PARTS[..3])];
        let text = render(&listing(&segs, false));
        check(&text);
        assert!(text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600,CAN-SKIP-UNTIL=12.0"));
        assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n#EXT-X-MEDIA-SEQUENCE:10\n"));
        assert!(text.contains("#EXT-X-MAP:URI=\"cam/abcd-init0.mp4\""));
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2026-12-05T22:33:40.000Z\n"), "{text}");
        assert!(text.contains("#EXT-X-PART:DURATION=0.200,URI=\"cam/abcd-11.0.m4s\",INDEPENDENT=YES\n"));
        assert!(text.contains("#EXT-X-PART:DURATION=0.200,URI=\"cam/abcd-13.2.m4s\"\n"));
        assert!(!text.contains("abcd-10.0.m4s"), "segment 10 is listed whole (no parts held)");
        assert!(!text.contains("abcd-13.m4s"), "the open segment has no EXTINF");
        assert!(text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"cam/abcd-13.3.m4s\"\n"), "{text}");
    }

    #[test]
    fn a_delta_update_skips_old_whole_segments_only() {
        let mut segs: Vec<SegMeta> = (0..10).map(|m| seg(m, true, &[])).collect();
        segs.push(seg(10, true, &PARTS));
        segs.push(seg(11, false, &PARTS[..2]));
        let full = render(&listing(&segs, false));
        let delta = render(&listing(&segs, true));
        check(&full);
        assert!(!full.contains("EXT-X-SKIP"));
        // 22.4 s listed; CAN-SKIP-UNTIL 12 s: the segments ending before 10.4 s are left out (0..=4).
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-SKIP:SKIPPED-SEGMENTS=5\n"), "{delta}");
        assert!(!delta.contains("abcd-4.m4s") && delta.contains("abcd-5.m4s"));
        assert!(delta.contains("#EXT-X-MAP:URI=\"cam/abcd-init0.mp4\""), "the map still precedes the first segment");
        // Without low latency there is nothing to skip.
        let mut l = listing(&segs, true);
        l.low_latency = false;
        assert!(!render(&l).contains("EXT-X-SKIP"));
    }

    #[test]
    fn fmp4_lists_whole_segments_with_their_init_sections_and_discontinuities() {
        let mut segs = vec![seg(3, true, &[]), seg(4, true, &[])];
        segs[1].discontinuity = true;
        segs[1].init = 1;
        let l = Listing { low_latency: false, preload: None, query: "?txSecret=x", ..listing(&segs, false) };
        let text = render(&l);
        assert!(text.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:3\n"));
        assert!(!text.contains("PART") && !text.contains("SERVER-CONTROL"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"cam/abcd-init1.mp4?txSecret=x\"\n"), "{text}");
        assert!(text.contains("#EXTINF:2.000,\ncam/abcd-4.m4s?txSecret=x\n"));
        let ended = render(&Listing { ended: true, ..l });
        assert!(ended.ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn blocking_parameters_are_checked() {
        let q = |s: &str| crate::names::parse_query(s);
        assert_eq!(
            Blocking::parse(&q("_HLS_msn=5&_HLS_part=2")),
            Ok(Blocking { msn: Some(5), part: Some(2), skip: false })
        );
        assert_eq!(Blocking::parse(&q("_HLS_skip=YES")), Ok(Blocking { msn: None, part: None, skip: true }));
        assert_eq!(Blocking::parse(&q("_HLS_part=2")), Err(BlockingError::PartWithoutMsn));
        assert_eq!(Blocking::parse(&q("_HLS_msn=-1")), Err(BlockingError::NotANumber("_HLS_msn", "-1".into())));
        assert_eq!(Blocking::parse(&q("_HLS_msn=x")), Err(BlockingError::NotANumber("_HLS_msn", "x".into())));
        assert_eq!(
            Blocking::parse(&q("_HLS_msn=1&_HLS_part=99999999999")).unwrap_err(),
            BlockingError::NotANumber("_HLS_part", "99999999999".into())
        );
        assert_eq!(Blocking::parse(&q("_HLS_skip=no")), Err(BlockingError::BadSkip("no".into())));
        assert_eq!(Blocking::strip("_HLS_msn=3&txSecret=a&_HLS_part=1&txTime=B"), "txSecret=a&txTime=B");
    }
}
