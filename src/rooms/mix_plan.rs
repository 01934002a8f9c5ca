//! A room's mix: which members it shows, in which order, with which template. Pure: the service compares the
//! plan with the running mix and creates, re-lays out or stops it.

use super::state::{Member, Role, RoomKind};

/// What a room asked for when it was created (`mix` and `record` in the creating enter).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixOptions {
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub fps: Option<u32>,
}

/// One member in the mix: its user id, and whether it sends video (an audio-only member's slot shows the
/// background).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub user: String,
    pub video: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub template: String,
    pub slots: Vec<Slot>,
}

/// The templates' capacities (mix::layout): a template asked for that cannot hold every anchor gives way to a
/// grid rather than leave anchors out.
fn capacity(template: &str) -> usize {
    match template {
        "1v1" | "bigsmall" | "pip" => 2,
        "1v3" => 4,
        "float" => 5,
        _ => usize::MAX,
    }
}

/// The mix a room's members make: its anchors (members sending media), the presenter first, then by when they
/// joined; `None` when nobody sends anything. A live room's default is `float` (the presenter full-screen,
/// co-hosts small along the bottom: live-room's layout); a call room's is `grid`.
pub fn plan(kind: RoomKind, asked: Option<&str>, members: &[Member], max_inputs: usize) -> Option<Plan> {
    let mut anchors: Vec<&Member> = members.iter().filter(|m| m.audio || m.video).collect();
    if anchors.is_empty() {
        return None;
    }
    anchors.sort_by(|a, b| {
        (a.role != Role::Presenter, a.joined_at, &a.user_id).cmp(&(b.role != Role::Presenter, b.joined_at, &b.user_id))
    });
    anchors.truncate(max_inputs);
    let default = match kind {
        RoomKind::Live => "float",
        RoomKind::Call => "grid",
    };
    let template = asked.unwrap_or(default);
    let template = if anchors.len() > capacity(template) { "grid" } else { template };
    Some(Plan {
        template: template.to_owned(),
        slots: anchors.iter().map(|m| Slot { user: m.user_id.clone(), video: m.video }).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::ClientKind;

    fn m(user: &str, role: Role, joined: u64, audio: bool, video: bool) -> Member {
        Member {
            user_id: user.into(),
            client: ClientKind::Web,
            role,
            joined_at: joined,
            session: 0,
            audio,
            video,
            may_publish: true,
        }
    }

    #[test]
    fn the_presenter_leads_anchors_follow_by_arrival_and_templates_give_way_to_a_grid() {
        let members = [
            m("late", Role::Anchor, 30, true, true),
            m("watcher", Role::Audience, 5, false, false),
            m("host", Role::Presenter, 40, true, true),
            m("voice", Role::Anchor, 10, true, false),
        ];
        let p = plan(RoomKind::Live, None, &members, 16).unwrap();
        assert_eq!(p.template, "float");
        let order: Vec<_> = p.slots.iter().map(|s| (s.user.as_str(), s.video)).collect();
        assert_eq!(order, [("host", true), ("voice", false), ("late", true)], "the audience is not shown");
        assert_eq!(plan(RoomKind::Call, None, &members, 16).unwrap().template, "grid");
        assert_eq!(plan(RoomKind::Call, Some("1v1"), &members, 16).unwrap().template, "grid", "1v1 holds two");
        assert_eq!(plan(RoomKind::Call, Some("1v3"), &members, 16).unwrap().template, "1v3");
        assert_eq!(plan(RoomKind::Call, None, &members, 2).unwrap().slots.len(), 2, "mix.max_inputs");
        assert_eq!(plan(RoomKind::Call, None, &members[1..2], 16), None, "nobody sends: no mix");
    }
}
