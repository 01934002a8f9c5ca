//! WHIP ingest from headless Chromium, read back by ffmpeg/ffprobe over RTMP and HTTP-FLV, and WHIP's errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Records `secs` of `url` to an FLV file with ffmpeg (stream copy) and returns its path.
fn capture(srv: &Server, url: &str, secs: u32, name: &str) -> std::path::PathBuf {
    let out = srv.dir.path().join(name);
    let st = Command::new("timeout")
        .arg("40")
        .arg("ffmpeg")
        .args(["-v", "error", "-y", "-i", url, "-t", &secs.to_string(), "-map", "0", "-c", "copy"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg could not read {url}");
    out
}

fn streams_of(path: &std::path::Path) -> Vec<serde_json::Value> {
    let o = ffprobe(path.to_str().unwrap(), &["-show_streams", "-of", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["streams"].as_array().cloned().unwrap_or_default()
}

fn whip_case(codec: &str) {
    let srv = Server::start("[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n");
    let stream = format!("wh{codec}");
    let url = format!("http://127.0.0.1:{}/whip/live/{stream}", srv.http_port);
    let mut browser = node_bg("whip_publish.mjs", &[&url, "14", codec]);
    assert!(
        wait_until(Duration::from_secs(20), || browser.stdout().contains("\"event\":\"connected\"")),
        "WHIP publish did not connect: {}\n{}",
        browser.stdout(),
        browser.stderr()
    );
    let info = srv.wait_live(&stream);
    assert_eq!(info["publisher"]["protocol"], "whip", "{info}");
    // HTTP-FLV and RTMP readers get H.264 + AAC that decode for 6 s.
    let flv = capture(&srv, &srv.flv_url(&stream), 6, "flv.flv");
    let rtmp = capture(&srv, &srv.rtmp_url(&stream), 6, "rtmp.flv");
    for file in [&flv, &rtmp] {
        let streams = streams_of(file);
        let codecs: Vec<&str> = streams.iter().filter_map(|s| s["codec_name"].as_str()).collect();
        assert!(codecs.contains(&"h264") && codecs.contains(&"aac"), "{codecs:?} in {}", file.display());
        let v = streams.iter().find(|s| s["codec_name"] == "h264").unwrap();
        assert_eq!(v["width"], 640, "{v}");
        let dec =
            Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(file).args(["-f", "null", "-"]).output().unwrap();
        assert!(
            dec.status.success() && dec.stderr.is_empty(),
            "decode errors: {}",
            String::from_utf8_lossy(&dec.stderr)
        );
        let o =
            ffprobe(file.to_str().unwrap(), &["-show_entries", "stream=codec_name,start_time,duration", "-of", "json"]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let start = |c: &str| {
            j["streams"].as_array().unwrap().iter().find(|s| s["codec_name"] == c).unwrap()["start_time"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let skew = (start("h264") - start("aac")).abs();
        assert!(skew <= 0.05, "A/V start times {skew:.3}s apart in {}: {j}", file.display());
        let dur: f64 = ffprobe(file.to_str().unwrap(), &["-show_entries", "format=duration", "-of", "csv=p=0"])
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .trim()
            .parse()
            .unwrap();
        assert!(dur >= 5.0, "{dur}s read from {}", file.display());
    }
    let j = browser_result(&mut browser, Duration::from_secs(40));
    assert_eq!(j["status"], 201);
    assert_eq!(j["codec"].as_str().unwrap().to_ascii_lowercase(), format!("video/{codec}"), "{j}");
    assert_eq!(j["deleteStatus"], 200, "DELETE ends the session: {j}");
    // DELETE unpublished the stream: readers are told as for RTMP (here: it leaves the API after the grace).
    let log = srv.log_text();
    assert!(log.contains("whip session deleted by the client"));
    // A/V timing came from RTCP sender reports on both tracks, not from arrival times alone.
    assert!(log.contains("first RTCP sender report: track timed by the sender's clock track=video"), "no video SR");
    assert!(log.contains("first RTCP sender report: track timed by the sender's clock track=audio"), "no audio SR");
}

#[test]
fn chromium_publishes_h264_over_whip_and_ffmpeg_reads_rtmp_and_flv() {
    whip_case("h264");
}

#[test]
fn chromium_publishes_vp8_only_over_whip_and_readers_get_h264() {
    whip_case("vp8");
}
