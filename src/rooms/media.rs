//! Which tracks a member's stream carries, read from its frames: a kind is present from its first frame until
//! none has come for the timeout (enable-mic off stops the audio frames; WeChat's pusher sends none rather than
//! silence). Pure: the caller passes each frame's arrival and the time of each check.

use std::time::{Duration, Instant};

use crate::media::MediaKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracks {
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug)]
pub struct Presence {
    timeout: Duration,
    last_audio: Option<Instant>,
    last_video: Option<Instant>,
}

impl Presence {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, last_audio: None, last_video: None }
    }

    /// A media frame (not a sequence header, not script data) that arrived at `at`.
    pub fn frame(&mut self, kind: MediaKind, at: Instant) {
        let slot = match kind {
            MediaKind::Audio => &mut self.last_audio,
            MediaKind::Video => &mut self.last_video,
            MediaKind::Data => return,
        };
        if slot.is_none_or(|t| at > t) {
            *slot = Some(at);
        }
    }

    /// The tracks present at `now`.
    pub fn at(&self, now: Instant) -> Tracks {
        let live = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < self.timeout);
        Tracks { audio: live(self.last_audio), video: live(self.last_video) }
    }

    /// When the next track could time out: the time to check again.
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        [self.last_audio, self.last_video].into_iter().flatten().map(|t| t + self.timeout).filter(|t| *t > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_is_present_from_its_first_frame_until_its_frames_stop() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut p = Presence::new(Duration::from_secs(3));
        assert_eq!(p.at(t0), Tracks::default());
        p.frame(MediaKind::Data, t0);
        assert_eq!(p.at(t0), Tracks::default(), "metadata is no track");
        p.frame(MediaKind::Video, ms(0));
        p.frame(MediaKind::Audio, ms(20));
        assert_eq!(p.at(ms(100)), Tracks { audio: true, video: true });
        // The microphone goes off: video frames go on, audio frames stop.
        for i in 1..100 {
            p.frame(MediaKind::Video, ms(i * 40));
        }
        assert_eq!(p.at(ms(3019)), Tracks { audio: true, video: true });
        assert_eq!(p.at(ms(3020)), Tracks { audio: false, video: true });
        assert_eq!(p.next_check(ms(3020)), Some(ms(99 * 40 + 3000)));
        // A late frame (from the cache) does not move the clock back.
        p.frame(MediaKind::Video, ms(10));
        assert!(p.at(ms(99 * 40 + 2999)).video);
        p.frame(MediaKind::Audio, ms(5000));
        assert_eq!(p.at(ms(5001)), Tracks { audio: true, video: true });
    }
}
