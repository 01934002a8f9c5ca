//! Layers without cycles (ARCHITECTURE invariant 10): a module may use modules of its own layer or below,
//! never above. Read from the source: every `crate::name` a file of `src/` mentions is an edge from its
//! top-level module to `name`.
//!
//! `KNOWN` would list upward edges tolerated for a while, each with what removing it takes (none now). The
//! test fails on any other upward edge, and on a listed edge that is gone (so the list only shrinks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. Pure code at the bottom; the hub with its event and metric types; services; protocol
/// adapters; process wiring.
const LAYERS: &[&[&str]] = &[
    &["media", "names", "auth", "usersig", "netio", "tls", "config", "timefmt", "health"],
    &["hub", "events", "metrics"],
    &["hls", "record", "transcode", "mix", "rooms", "cluster", "webhooks", "access", "conn", "placeholder"],
    &["rtmp", "http", "webrtc"],
    &["server", "main", "lib", "fuzz"],
];

/// Upward edges still in the tree: (from, to, what removing it takes).
const KNOWN: &[(&str, &str, &str)] = &[];

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

/// The top-level module names a source file mentions as `crate::name` or inside `use crate::{…}`.
fn mentions(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Only the first segment of each item counts: `use crate::{hub::Hub, media}`.
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every edge between different top-level modules, with a file that makes it.
fn edges(src: &Path) -> BTreeMap<(String, String), String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let from = first.trim_end_matches(".rs").to_owned();
        for to in mentions(&std::fs::read_to_string(&f).unwrap()) {
            if to != from && layer_of(&to).is_some() {
                edges.entry((from.clone(), to)).or_insert_with(|| rel.display().to_string());
            }
        }
    }
    edges
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut missing = Vec::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
        if layer_of(&name).is_none() {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "modules with no layer in tests/layers.rs: {missing:?}");
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    let mut upward = Vec::new();
    for ((from, to), file) in &edges {
        let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else { continue };
        if b > a && !KNOWN.iter().any(|(f, t, _)| f == from && t == to) {
            upward.push(format!("{file}: {from} (layer {a}) uses {to} (layer {b})"));
        }
    }
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    let gone: Vec<_> = KNOWN.iter().filter(|(f, t, _)| !edges.contains_key(&(f.to_string(), t.to_string()))).collect();
    assert!(gone.is_empty(), "these known upward edges are gone: remove them from KNOWN: {gone:?}");
}

#[test]
fn the_scanner_sees_grouped_and_nested_paths() {
    let m = mentions("use crate::{hub::Hub, media};\nlet x = crate::config::Config::default_config();");
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["config", "hub", "media"]);
}
