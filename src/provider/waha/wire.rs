//! What WAHA's answers look like and how they read: WhatsApp ids (`<digits>@c.us`, `@lid`),
//! participant rows in every engine's shape, per-member write results, session info, and the
//! classification of error answers (waha.md §3–§5).

use super::*;

/// Which server of WhatsApp an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    Phone,
    Lid,
}

/// A member id reduced to its digits and server: `@s.whatsapp.net` is `@c.us`, device
/// suffixes (`123:45@lid`) are dropped (waha.md §6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Jid {
    pub(super) user: String,
    pub(super) server: Server,
}

impl std::fmt::Display for Jid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.server {
            Server::Phone => write!(f, "{}@c.us", self.user),
            Server::Lid => write!(f, "{}@lid", self.user),
        }
    }
}

pub(super) fn jid(raw: &str) -> Option<Jid> {
    let (user, server) = raw.trim().split_once('@')?;
    let user = user.split(':').next().unwrap_or(user);
    if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let server = match server {
        "c.us" | "s.whatsapp.net" => Server::Phone,
        "lid" => Server::Lid,
        _ => return None,
    };
    Some(Jid {
        user: user.to_string(),
        server,
    })
}

/// A participant as any listing gives it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    /// The id exactly as listed, to send back in writes.
    pub(super) raw: String,
    pub(super) id: Jid,
    /// The phone, where the listing gives it.
    pub(super) pn: Option<Jid>,
    pub(super) admin: bool,
    pub(super) superadmin: bool,
}

pub(super) fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// One row of the v2 listing or of any engine's legacy listing, told apart by its shape.
pub(super) fn parse_row(v: &Value) -> Result<Option<Row>, ProviderError> {
    let bad = || {
        ProviderError::fatal(format!(
            "list participants: unexpected participant entry {}",
            truncate(&v.to_string(), 200)
        ))
    };
    let (raw, pn, admin, superadmin) = if let Some(j) = str_field(v, "JID") {
        // GOWS legacy: JID may be the lid, PhoneNumber the phone.
        let pn = str_field(v, "PhoneNumber").map(String::from);
        let is = |k| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        (j.to_string(), pn, is("IsAdmin"), is("IsSuperAdmin"))
    } else if let Some(id) = v.get("id").filter(|i| i.is_object()) {
        // WEBJS legacy: the id is an object.
        let raw = str_field(id, "_serialized").ok_or_else(bad)?.to_string();
        let is = |k| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        (raw, None, is("isAdmin"), is("isSuperAdmin"))
    } else if let Some(role) = str_field(v, "role") {
        // v2: uniform across engines.
        let raw = str_field(v, "id").ok_or_else(bad)?.to_string();
        let pn = str_field(v, "pn").map(String::from);
        match role {
            "superadmin" => (raw, pn, true, true),
            "admin" => (raw, pn, true, false),
            "participant" => (raw, pn, false, false),
            // Someone who left is not a member; only events carry this role (waha.md §1).
            "left" => return Ok(None),
            _ => return Err(bad()),
        }
    } else {
        // NOWEB legacy: `admin` is null, "admin" or "superadmin".
        let raw = str_field(v, "id").ok_or_else(bad)?.to_string();
        let pn = str_field(v, "phoneNumber").map(String::from);
        let admin = str_field(v, "admin");
        (raw, pn, admin.is_some(), admin == Some("superadmin"))
    };
    let id = jid(&raw).ok_or_else(bad)?;
    let pn = pn
        .as_deref()
        .and_then(jid)
        .filter(|j| j.server == Server::Phone);
    Ok(Some(Row {
        raw,
        id,
        pn,
        admin,
        superadmin,
    }))
}

/// Every row of a listing body; one entry that cannot be read fails the whole read.
pub(super) fn parse_rows(rows: &[Value]) -> Result<Vec<Row>, ProviderError> {
    let mut out = Vec::with_capacity(rows.len());
    for v in rows {
        out.extend(parse_row(v)?);
    }
    Ok(out)
}

/// One member's result of a write call, as any engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MemberResult {
    /// Every id digits string the result names (JID, phone, lid).
    pub(super) users: Vec<String>,
    pub(super) code: u16,
    pub(super) message: String,
}

/// The per-member results of a 2xx write answer. `None` means the engine reports nothing per
/// member (WEBJS remove/promote/demote answer `{"status":200}`): the engine's re-read tells.
pub(super) fn parse_results(
    r: &Response,
    label: &str,
) -> Result<Option<Vec<MemberResult>>, ProviderError> {
    if r.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(_) => Value::String(String::from_utf8_lossy(&r.body).into_owned()),
    };
    let users_of = |ids: &[Option<&str>]| -> Vec<String> {
        ids.iter()
            .flatten()
            .filter_map(|s| jid(s))
            .map(|j| j.user)
            .collect()
    };
    match &v {
        Value::String(s) => {
            // WEBJS answers 200 with a plain error string when the account is not admin.
            let class = if s.contains("admin rights") {
                "the WhatsApp account is not an admin of this group"
            } else {
                "the engine refused the call"
            };
            Err(
                ProviderError::fatal(format!("{label}: {class}: {}", truncate(s, 200)))
                    .with_code("not-authorized"),
            )
        }
        Value::Array(items) => Ok(Some(
            items
                .iter()
                .map(|it| {
                    if it.get("JID").is_some() {
                        let code = it.get("Error").and_then(Value::as_u64).unwrap_or(0) as u16;
                        MemberResult {
                            users: users_of(&[
                                str_field(it, "JID"),
                                str_field(it, "PhoneNumber"),
                                str_field(it, "LID"),
                            ]),
                            code: if code == 0 { 200 } else { code },
                            message: String::new(),
                        }
                    } else {
                        let code = match it.get("status") {
                            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
                            Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as u16,
                            _ => 0,
                        };
                        MemberResult {
                            users: users_of(&[str_field(it, "jid"), str_field(it, "id")]),
                            code,
                            message: String::new(),
                        }
                    }
                })
                .collect(),
        )),
        Value::Object(map) if map.len() == 1 && map.contains_key("status") => Ok(None),
        Value::Object(map) => Ok(Some(
            map.iter()
                .filter(|(_, r)| r.is_object())
                .map(|(id, r)| MemberResult {
                    users: users_of(&[Some(id.as_str())]),
                    code: r.get("code").and_then(Value::as_u64).unwrap_or(0) as u16,
                    message: str_field(r, "message").unwrap_or_default().to_string(),
                })
                .collect(),
        )),
        _ => Ok(None),
    }
}

/// The outcome of each op of one call, in `ops` order. Results are matched on the digits of
/// every id they name; the server may answer under an id it never showed us (a phone added
/// joins under its hidden lid), so when exactly one op and one result are left unmatched they
/// belong together. Anything else unmatched is a failure: the re-read then tells the truth.
pub(super) fn outcomes(
    kind: OpKind,
    ops: &[Op],
    sent: &[String],
    results: Option<&[MemberResult]>,
) -> Vec<MemberOutcome> {
    let Some(results) = results else {
        return ops
            .iter()
            .map(|op| MemberOutcome::done(op.member.clone()))
            .collect();
    };
    let mut used = vec![false; results.len()];
    let mut found: Vec<Option<usize>> = ops
        .iter()
        .zip(sent)
        .map(|(op, sent)| {
            let keys: BTreeSet<String> = [op.member.as_str(), sent.as_str()]
                .into_iter()
                .filter_map(jid)
                .map(|j| j.user)
                .collect();
            let i = results
                .iter()
                .enumerate()
                .position(|(i, r)| !used[i] && r.users.iter().any(|u| keys.contains(u)))?;
            used[i] = true;
            Some(i)
        })
        .collect();
    let lone_op: Vec<usize> = (0..ops.len()).filter(|&i| found[i].is_none()).collect();
    let lone_result: Vec<usize> = (0..results.len()).filter(|&i| !used[i]).collect();
    if let ([o], [r]) = (lone_op.as_slice(), lone_result.as_slice()) {
        found[*o] = Some(*r);
    }
    ops.iter()
        .zip(found)
        // A member no result speaks of gets no outcome: the engine reports it as failed.
        .filter_map(|(op, i)| Some(outcome(kind, op, &results[i?])))
        .collect()
}

pub(super) fn outcome(kind: OpKind, op: &Op, r: &MemberResult) -> MemberOutcome {
    let member = op.member.clone();
    let text = |default: &str| {
        if r.message.is_empty() {
            default.to_string()
        } else {
            r.message.clone()
        }
    };
    match (kind, r.code) {
        (_, 200 | 201) => MemberOutcome::done(member),
        (OpKind::Add, 409) => MemberOutcome::already(member),
        (OpKind::Remove, 404) => MemberOutcome::already(member),
        (OpKind::Add, 403) => MemberOutcome::failed(
            member,
            "403",
            text("their privacy settings forbid adding them; only a private invite works"),
        ),
        (OpKind::Add, 404) => MemberOutcome::failed(member, "404", text("not a WhatsApp number")),
        (OpKind::Add, 408) => MemberOutcome::failed(
            member,
            "408",
            text("left the group recently and cannot be re-added yet"),
        ),
        (OpKind::Add, 417) => MemberOutcome::failed(
            member,
            "417",
            text("cannot be added to this community group"),
        ),
        (OpKind::Add, 419) => MemberOutcome::failed(
            member,
            "419",
            text(&format!("the group is full ({MAX_GROUP_SIZE} members)")),
        ),
        (_, code) => MemberOutcome::failed(member, code.to_string(), text("refused by WhatsApp")),
    }
}

pub(super) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// The server's own short text of an error answer: `message`, `error`, or the 500 envelope's
/// `exception` fields. Never the echoed request (waha.md §4).
pub(super) fn short_message(r: &Response) -> String {
    let v: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(_) => return String::new(),
    };
    let mut parts = Vec::new();
    if let Some(ex) = v.get("exception") {
        // A `TypeError` is a bug on our side (waha.md §4); a plain `Error` says nothing.
        if let Some(name) = str_field(ex, "name").filter(|n| *n != "Error") {
            parts.push(name.to_string());
        }
        for k in ["message", "details", "data"] {
            match ex.get(k) {
                Some(Value::String(s)) if !s.is_empty() => parts.push(s.clone()),
                Some(Value::Number(n)) => parts.push(n.to_string()),
                _ => {}
            }
        }
    } else {
        for k in ["error", "message", "status"] {
            if let Some(s) = str_field(&v, k) {
                parts.push(s.to_string());
            }
        }
    }
    truncate(&parts.join(": "), 300)
}

/// Classify a non-2xx answer (waha.md §4). WAHA turns every engine failure into a 500, so the
/// class comes from the engine's text: `rate-overlimit` is WhatsApp throttling, connection
/// troubles are transient, refusals (rights, unknown group, bad request) are not.
pub fn classify_error(r: &Response, label: &str) -> ProviderError {
    let text = short_message(r);
    let lower = text.to_ascii_lowercase();
    let message = if text.is_empty() {
        format!("{label}: HTTP {}", r.status)
    } else {
        format!("{label}: HTTP {}: {text}", r.status)
    };
    let (class, code): (ErrorClass, Option<&str>) = match r.status {
        _ if lower.contains("rate-overlimit") || lower.contains("overlimit") => {
            (ErrorClass::Throttled, Some("rate-overlimit"))
        }
        401 => (ErrorClass::Fatal, Some("unauthorized")),
        403 => (ErrorClass::Fatal, Some("forbidden")),
        422 if lower.contains("starting") => (ErrorClass::Transient, Some("session-not-working")),
        422 => (ErrorClass::Fatal, Some("session-not-working")),
        500 if lower.contains("not-authorized") || lower.contains("forbidden") => {
            (ErrorClass::Fatal, Some("not-authorized"))
        }
        500 if lower.contains("item-not-found")
            || lower.contains("not found")
            || lower.contains("does not exist")
            || lower.contains("not participating") =>
        {
            (ErrorClass::Fatal, Some("item-not-found"))
        }
        500 if lower.contains("bad-request") => (ErrorClass::Fatal, Some("bad-request")),
        // A body the controller could not read: a bug on our side, never retried.
        500 if lower.contains("typeerror") => (ErrorClass::Fatal, Some("type-error")),
        500 if lower.contains("expected at least 1 children") => {
            (ErrorClass::Fatal, Some("no-such-member"))
        }
        s => (rest::class_of_status(s), None),
    };
    let e = ProviderError {
        class,
        code: None,
        message,
        retry_after: None,
    };
    match code {
        Some(c) => e.with_code(c),
        None => e,
    }
}

#[derive(Deserialize)]
pub(super) struct SessionInfo {
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) me: Option<SessionMe>,
    #[serde(default)]
    pub(super) engine: Option<SessionEngine>,
}

#[derive(Deserialize)]
pub(super) struct SessionMe {
    pub(super) id: String,
    #[serde(default)]
    pub(super) lid: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct SessionEngine {
    #[serde(default)]
    pub(super) engine: Option<String>,
}
