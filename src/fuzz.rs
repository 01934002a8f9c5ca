//! Fuzz targets: every parser of untrusted input, as a function over bytes that must never panic, hang or
//! allocate without bound. `tests/fuzz.rs` replays the corpus and runs a seeded mutation loop over each
//! target on every `make test`; the cargo-fuzz crate in `fuzz/` drives the same functions coverage-guided
//! (`make fuzz`).

use bytes::{Bytes, BytesMut};

use crate::media::aac::AudioSpecificConfig;
use crate::media::avc::{self, AvcDecoderConfig};
use crate::media::{amf0, flv, mp4};

/// A named target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, by the name its corpus directory has (`fuzz/corpus/<name>`).
pub const TARGETS: &[Target] = &[
    Target { name: "amf0", run: amf0_values },
    Target { name: "flv", run: flv_tags },
    Target { name: "avc_config", run: avc_config },
    Target { name: "hevc_config", run: hevc_config },
    Target { name: "aac_config", run: aac_config },
    Target { name: "mp4", run: mp4_file },
    Target { name: "http_flv_request", run: http_flv_request },
    Target { name: "sdp_offer", run: sdp_offer },
    Target { name: "rtmp_chunks", run: rtmp_chunks },
    Target { name: "rtmp_session", run: crate::rtmp::session::fuzz_input },
    Target { name: "sei", run: sei_units },
];

/// SEI NAL units (a publisher's, or any bytes as an access unit): parsed, and an SEI added to them.
pub fn sei_units(data: &[u8]) {
    use crate::media::sei;
    if let Ok(msgs) = sei::parse_nal(data) {
        // What parses, rebuilds to something that parses the same.
        let again = sei::parse_nal(&sei::build_nal(&msgs)).expect("a rebuilt SEI parses");
        assert_eq!(again, msgs);
    }
    let _ = sei::messages_in(data, 4);
    let _ = sei::insert_into(data, 4, &[6, 5, 0x80]);
}

/// AMF0 values (RTMP commands and metadata).
pub fn amf0_values(data: &[u8]) {
    let _ = amf0::decode_all(data);
    let _ = crate::rtmp::message::Command::parse(crate::rtmp::message::COMMAND_AMF0, data);
    if let Ok(v) = crate::rtmp::message::parse_data(crate::rtmp::message::DATA_AMF0, data) {
        let _ = crate::rtmp::message::metadata_body(&v);
    }
}

/// An FLV file or HTTP-FLV body: tags, then each tag as the media model's frame.
pub fn flv_tags(data: &[u8]) {
    let mut p = flv::FlvParser::new();
    // Delivered in pieces, as a socket would.
    for piece in data.chunks(61) {
        p.feed(piece);
        while let Ok(Some(t)) = p.next_tag() {
            let _ = flv::frame_from_tag(t.tag_type, t.timestamp as i64, t.body.clone());
        }
    }
}

/// An AVC decoder configuration record, its SPS, and AVCC access units split with it.
pub fn avc_config(data: &[u8]) {
    if let Ok(cfg) = AvcDecoderConfig::parse(data) {
        for sps in &cfg.sps {
            let _ = avc::parse_sps(sps);
        }
        let _ = cfg.to_bytes();
        for n in avc::avcc_nalus(data, cfg.nal_length_size).take(1024) {
            if n.is_err() {
                break;
            }
        }
    }
    let _ = avc::parse_sps(data);
    let _ = avc::remove_emulation_prevention(data);
}

/// An HEVC decoder configuration record (`hvcC`), its SPS, and an access unit converted to Annex-B with it.
pub fn hevc_config(data: &[u8]) {
    if let Ok(cfg) = crate::media::hevc::HevcDecoderConfig::parse(data) {
        let _ = cfg.picture_size();
        let mut out = Vec::new();
        let _ = crate::media::hevc::to_annexb(data, &cfg, true, true, &mut out);
    }
    let _ = crate::media::hevc::parse_sps(data);
}

/// An AAC AudioSpecificConfig.
pub fn aac_config(data: &[u8]) {
    if let Ok(asc) = AudioSpecificConfig::parse(data) {
        let _ = asc.to_bytes();
        let _ = crate::media::ts::adts_header(&asc, data.len());
    }
}

/// An MP4 file as crash repair and stitching read it (from disk, so untrusted).
pub fn mp4_file(data: &[u8]) {
    let (boxes, end) = mp4::top_boxes(data);
    let _ = mp4::parse(&boxes, end);
    let _ = mp4::box_header(data);
}

/// The first request on an HTTP connection, as the HTTP-FLV sniffer reads it.
pub fn http_flv_request(data: &[u8]) {
    let _ = crate::http::flv_direct::sniff(data);
}

/// A WHIP/WHEP offer as livegate's own checks read it (webrtc-rs parses it too, but that is its fuzzing).
pub fn sdp_offer(data: &[u8]) {
    let sdp = String::from_utf8_lossy(data);
    let _ = crate::webrtc::offered_codecs(&sdp);
    let _ = crate::webrtc::has_active_media(&sdp, "video");
    let _ = crate::webrtc::udp_mux::sdp_ufrag(&sdp);
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let _ = crate::webrtc::udp_mux::rewrite_candidate_port(&sdp, ip, 9, 10);
    let _ = crate::webrtc::udp_mux::stun_username(data);
}

/// RTMP chunk reassembly alone, with the chunk size the stream itself sets.
pub fn rtmp_chunks(data: &[u8]) {
    let mut d = crate::rtmp::chunk::ChunkDecoder::new();
    let mut buf = BytesMut::new();
    for piece in data.chunks(113) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => {
                    if m.type_id == crate::rtmp::message::SET_CHUNK_SIZE && m.payload.len() >= 4 {
                        let v = u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                        if d.set_chunk_size(v & 0x7FFF_FFFF).is_err() {
                            return;
                        }
                    }
                    let _: Bytes = m.payload;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
