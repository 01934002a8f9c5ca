//! A 1v3 call with the real client libraries around one room mix (docs/rooms.md, "The room mix and its
//! recording"): two browsers — web/livegate-room.js in headless Chromium, each camera a solid colour
//! (tests/browser/room_web_member.mjs with a y4m file as Chromium's fake camera) — and two mini programs —
//! miniprogram/livegate-wx.js under Node with the `wx` shim, each `<live-pusher>` an ffmpeg pushing a solid colour
//! (tests/browser/room_wx_member.mjs) — in a call room created with a grid mix recorded to MP4. The room's mix,
//! played as a CDN viewer plays it, shows the four colours in join order; when everyone has left, the recording's
//! callback carries the room's recordId and the file decodes. The drivers print what they see as JSON lines; the
//! test waits on those and on decoded pictures, never on time.

mod common;

use std::path::{Path, PathBuf};

use std::process::Command;

use common::room_member::{near, pixel, room_call, start_member, user_sig, wait_grid, Member, Rgb, GRID, LIMIT};
use common::*;
use serde_json::json;

const APP: u64 = 1_400_000_456;
const KEY: &str = "9e107d9d372bb6826bd81d3542a419d6e277d4d731479571562f82a7b4b0a9c3";

/// The grids of a recorded file, one frame a second.
fn recorded_grids(file: &Path) -> Vec<Vec<Rgb>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-vf", "fps=1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "640x360", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(640 * 360 * 3).map(|f| GRID.iter().map(|(x, y)| pixel(f, *x, *y)).collect()).collect()
}

/// A solid-colour camera for Chromium (`--use-file-for-fake-video-capture`): 3 s of 320x180 I420, which Chromium
/// loops.
fn color_y4m(dir: &Path, color: &str) -> PathBuf {
    let path = dir.join(format!("{color}.y4m"));
    let out = Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-f", "lavfi", "-i", &format!("color=c={color}:s=320x180:r=25")])
        .args(["-t", "3", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

#[test]
fn two_browsers_and_two_mini_programs_in_one_mixed_and_recorded_call() {
    let (cb_port, callbacks) = http_receiver(200);
    let srv = Server::start(&format!(
        "[webrtc]\nudp_port_min = 0\nudp_port_max = 0\n[play]\nmin_cache = 0.0\n[mix]\ngop_secs = 1.0\n\
         [record]\ncallback_urls = [\"http://127.0.0.1:{cb_port}/rec\"]\n\
         [rooms]\napps = [{{ sdk_app_id = {APP}, secret_key = \"{KEY}\" }}]\n"
    ));
    let room = "class-1v3";
    let (red, lime, blue, yellow) = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0));
    // The grid's order is the members' join order (ties within a second by user id): they enter one after the
    // other, with ids that sort the same way.
    let members = [
        ("u1-web", "room_web_member.mjs", "red"),
        ("u2-wx", "room_wx_member.mjs", "lime"),
        ("u3-web", "room_web_member.mjs", "blue"),
        ("u4-wx", "room_wx_member.mjs", "yellow"),
    ];

    // The organiser (an integrator's server) creates the room with its mix and recording: the client libraries'
    // enterRoom takes no `mix`/`record`/`recordId`. It hands the room over once the first member is in.
    let body = json!({
        "sdkAppId": APP, "userId": "organiser", "userSig": user_sig(APP, KEY, "organiser"), "client": "web",
        "mix": {"template": "grid", "width": 640, "height": 360}, "record": ["mp4"], "recordId": "rec-1v3",
    });
    let r = room_call(&srv, "POST", &format!("/api/v1/rooms/{room}/enter"), None, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let organiser = r.json();
    assert_eq!((organiser["created"].as_bool(), organiser["room"]["kind"].as_str()), (Some(true), Some("call")));
    let mix_flv = organiser["mix"]["play"]["flv"].as_str().expect("the room's mix URL").to_owned();

    let mut running: Vec<Member> = Vec::new();
    for (i, (user, script, color)) in members.iter().enumerate() {
        let camera = match *script {
            "room_web_member.mjs" => json!({"fakeVideo": color_y4m(srv.dir.path(), color)}),
            _ => json!({"color": color}),
        };
        let mut cfg = json!({"enableCamera": true, "enableMic": true});
        cfg.as_object_mut().unwrap().extend(camera.as_object().unwrap().clone());
        let m = start_member(script, &srv, (APP, KEY), user, room, cfg);
        let entered = m.wait_for("enter", LIMIT, |l| {
            l["type"] == "entered" || l["type"] == "error" || l["type"] == "result" && l["ok"] == false
        });
        assert_eq!(entered["type"], "entered", "{}", m.dump());
        running.push(m);
        if i == 0 {
            let path = format!("/api/v1/rooms/{room}/leave");
            let r = room_call(&srv, "POST", &path, organiser["token"].as_str(), &json!({}));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }

    // Everyone sees the three others' video and decodes it: the browsers over WHEP, the mini programs over
    // HTTP-FLV.
    for m in &running {
        for (other, _, _) in members.iter().filter(|(u, _, _)| *u != m.name) {
            m.wait_for(&format!("REMOTE_VIDEO_ADD {other}"), LIMIT, |l| {
                l["name"] == "REMOTE_VIDEO_ADD" && l["userID"] == *other
            });
            m.wait_player(other, "decoded video", |p| Member::num(p, "videoFrames") >= 25);
        }
    }

    // The room's mix, played with its signature only (as a CDN or a live room's audience plays it): a 2x2 grid in
    // join order.
    assert!(!mix_flv.contains("memberKey"), "{mix_flv}");
    wait_grid(&mix_flv, [red, lime, blue, yellow], LIMIT)
        .unwrap_or_else(|got| panic!("the mix never showed the four members in join order: {got:?}"));

    // Everyone leaves: the mix stops and its recording ends, with the room's recordId in its callback.
    for m in &mut running {
        m.send(json!({"cmd": "exit"}));
    }
    for m in &running {
        m.wait_for("exit", LIMIT, |l| l["type"] == "exited");
    }
    let members_now = srv.api("GET", &format!("/api/v1/rooms/{room}")).json();
    assert_eq!(members_now["members"].as_array().map(Vec::len), Some(0), "{members_now}");
    let recorded = wait_until(LIMIT, || callbacks.lock().unwrap().iter().any(|c| c["record_id"] == "rec-1v3"));
    assert!(recorded, "no recording callback with the room's recordId: {:?}", callbacks.lock().unwrap());
    let cb = callbacks.lock().unwrap().iter().find(|c| c["record_id"] == "rec-1v3").cloned().unwrap();
    assert_eq!(cb["file_format"], "mp4", "{cb}");
    let file = srv.dir.path().join("recordings").join(cb["path"].as_str().unwrap());
    assert_eq!(decode_errors(&file), "", "{cb}");
    let streams = probe_streams(file.to_str().unwrap());
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("video in the recording");
    assert_eq!((video["width"].as_u64(), video["height"].as_u64()), (Some(640), Some(360)), "{cb}");
    assert!(streams.iter().any(|s| s["codec_type"] == "audio"), "the members' voices are mixed in: {streams:?}");
    // The recording holds the call: at some second the four colours, in the grid's order.
    let grids = recorded_grids(&file);
    assert!(
        grids.iter().any(|g| g.iter().zip([red, lime, blue, yellow]).all(|(c, w)| near(*c, w))),
        "no second of the recording shows all four: {grids:?}"
    );

    for m in &running {
        let errors = m.events("ERROR");
        assert!(errors.is_empty(), "{}: errors {errors:?}", m.name);
    }
}
