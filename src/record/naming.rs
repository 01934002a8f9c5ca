//! Recording file names from a template such as `{app}/{stream}/{stream}_{start:%Y-%m-%d-%H-%M-%S}.{ext}`.
//!
//! Pure. Names are sanitized segment by segment, so no template or stream name can climb out of the
//! recording root or put control characters in a path.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}} (use app, stream, start, ext, record_id, file_id)")]
    Unknown(String),
    #[error("unclosed '{{' in the template")]
    Unclosed,
    #[error("the template must end in .{{ext}}")]
    NoExt,
}

pub struct NameParts<'a> {
    pub app: &'a str,
    pub stream: &'a str,
    pub record_id: &'a str,
    pub file_id: &'a str,
    pub ext: &'a str,
    /// Unix seconds of the file's first frame.
    pub start: u64,
}

/// Checks a template once, at start-up.
pub fn validate(template: &str) -> Result<(), TemplateError> {
    if !template.ends_with(".{ext}") {
        return Err(TemplateError::NoExt);
    }
    render(template, &NameParts { app: "a", stream: "s", record_id: "r", file_id: "f", ext: "flv", start: 0 })
        .map(|_| ())
}

/// The relative path for a file: `/`-separated segments, each sanitized.
pub fn render(template: &str, p: &NameParts<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find('}').ok_or(TemplateError::Unclosed)?;
        let inner = &after[..end];
        let (name, fmt) = inner.split_once(':').unwrap_or((inner, "%Y-%m-%d-%H-%M-%S"));
        match name {
            "app" => out.push_str(p.app),
            "stream" => out.push_str(p.stream),
            "record_id" => out.push_str(p.record_id),
            "file_id" => out.push_str(p.file_id),
            "ext" => out.push_str(p.ext),
            "start" => out.push_str(&strftime_utc(fmt, p.start)),
            other => return Err(TemplateError::Unknown(other.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let segs: Vec<String> = out.split('/').map(sanitize_segment).filter(|s| !s.is_empty()).collect();
    Ok(segs.join("/"))
}

/// Keeps letters, digits, `-`, `_`, `.`; anything else becomes `_`; a segment never starts with a dot.
fn sanitize_segment(s: &str) -> String {
    let mut v: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    while v.starts_with('.') {
        v.replace_range(..1, "_");
    }
    v
}

/// `%Y %m %d %H %M %S` (and `%%`) of a Unix time, in UTC.
pub fn strftime_utc(fmt: &str, unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{y:04}")),
            Some('m') => out.push_str(&format!("{mo:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

use crate::timefmt::civil;

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "{app}/{stream}/{stream}_{start:%Y-%m-%d-%H-%M-%S}.{ext}";

    fn parts<'a>(stream: &'a str) -> NameParts<'a> {
        NameParts { app: "live", stream, record_id: "r1", file_id: "abc", ext: "flv", start: 1_795_364_459 }
    }

    #[test]
    fn default_template() {
        assert_eq!(render(T, &parts("test")).unwrap(), "live/test/test_2026-11-22-16-20-59.flv");
        assert_eq!(strftime_utc("%Y-%m-%d %H:%M:%S", 951_782_400), "2000-02-29 00:00:00");
        assert_eq!(strftime_utc("%Y", 0), "1970");
    }

    #[test]
    fn names_cannot_escape_or_carry_control_characters() {
        let p = render(T, &parts("../../etc\u{0}x")).unwrap();
        assert!(!p.contains(".."), "{p}");
        assert!(!p.contains('\0'));
        assert!(p.starts_with("live/"));
        assert!(render("/abs/{stream}.{ext}", &parts("x")).unwrap().starts_with("abs/"));
    }

    #[test]
    fn template_errors() {
        assert_eq!(validate("{nope}.{ext}"), Err(TemplateError::Unknown("nope".into())));
        assert_eq!(validate("{app"), Err(TemplateError::NoExt));
        assert_eq!(validate("{stream}.flv"), Err(TemplateError::NoExt));
        assert!(validate(T).is_ok());
    }
}
