//! A group's planned batches packed into as few `batch` requests as 50 commands each allow:
//! every kind's commands in plan order (adds, manager changes, removals, the owner transfer),
//! then the re-reads that verify them (`im.chat.user.list`, `im.dialog.get`) in the last request.
//! Each command's answer is routed back to the member and batch it was for, and the re-reads
//! stand in for the engine's verifying read of the chat.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::ctx::Ctx;
use crate::model::{Batch, MemberId, MemberOutcome, Op, OpKind};
use crate::provider::ProviderError;

use super::{
    ADD_IDS_PER_COMMAND, BatchResult, Bitrix24, Cmd, Dialog, MAX_COMMANDS, manager_flag, parse_ids,
    user_id,
};

/// Where the answer to one member's operation is found.
enum Answer {
    /// A command of its own (or shared with other adds): its key.
    Key(String),
    /// Nothing was sent for it; the outcome is known already.
    Known(MemberOutcome),
}

/// One batch's part of the packed requests.
struct Part {
    kind: OpKind,
    answers: Vec<(Op, Answer)>,
    /// The batch cannot be sent at all (e.g. a portal without manager changes).
    refused: Option<ProviderError>,
}

impl Bitrix24 {
    /// Send `batches` of chat `chat` packed; one result per batch, in order.
    pub(super) async fn pack(
        &self,
        ctx: &Ctx,
        chat: u64,
        batches: &[Batch],
    ) -> Vec<Result<Vec<MemberOutcome>, ProviderError>> {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chat);
        let me = match self.me(ctx).await {
            Ok(me) => me,
            Err(e) => return batches.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut cmds: Vec<Cmd> = Vec::new();
        let mut parts = Vec::with_capacity(batches.len());
        for batch in batches {
            parts.push(self.commands(chat, batch, Some(&me), &mut cmds));
        }
        if cmds.is_empty() {
            return parts.into_iter().map(finish_unsent).collect();
        }
        // Both re-reads, always: together they are the chat's whole state, which verifies
        // every member here and spares the engine's verifying read.
        let users_key = keyed(&cmds, "users");
        cmds.push(Cmd::new(
            users_key.clone(),
            "im.chat.user.list",
            format!("im.chat.user.list?CHAT_ID={chat}"),
        ));
        let dialog_key = keyed(&cmds, "dialog");
        cmds.push(Cmd::new(
            dialog_key.clone(),
            "im.dialog.get",
            format!("im.dialog.get?DIALOG_ID=chat{chat}"),
        ));

        // Send in requests of at most 50 commands; the verifying reads are last, so they run
        // after every operation whichever request they land in.
        let mut res = BatchResult::default();
        let mut failed: Option<(usize, ProviderError)> = None;
        let label = batches.first().map_or("write", |b| b.kind.as_str());
        for (i, request) in cmds.chunks(MAX_COMMANDS).enumerate() {
            match self.batch(ctx, request, true, label).await {
                Ok(r) => {
                    res.ok.extend(r.ok);
                    res.errors.extend(r.errors);
                    res.time.extend(r.time);
                }
                Err(e) => {
                    failed = Some((i * MAX_COMMANDS, e));
                    break;
                }
            }
        }
        let sent_upto = failed.as_ref().map_or(cmds.len(), |(n, _)| *n);
        let position: BTreeMap<&str, usize> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key.as_str(), i))
            .collect();
        let manager_missing = res.errors.iter().any(|(k, (c, _))| {
            k.contains("mgr") && c.eq_ignore_ascii_case("ERROR_METHOD_NOT_FOUND")
        });
        if manager_missing {
            self.managers.store(2, Ordering::Relaxed);
        } else if parts
            .iter()
            .any(|p| matches!(p.kind, OpKind::Promote | OpKind::Demote) && p.refused.is_none())
            && failed.is_none()
        {
            self.managers.store(1, Ordering::Relaxed);
        }

        // The re-reads: from the packed requests, or one more read where they were not answered.
        let mut listed = res.ok.get(&users_key).and_then(|v| parse_ids(v).ok());
        if listed.is_none() && failed.is_none() {
            listed = self.list_members(ctx, chat).await.ok();
        }
        let dialog = res.ok.get(&dialog_key).and_then(|v| Dialog::parse(v).ok());
        if let (Some(ids), Some(d), None) = (&listed, &dialog, &failed)
            && let Ok(live) = self.live_group(chat, d, ids, me.clone())
        {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(chat, live);
        }

        parts
            .into_iter()
            .map(|part| {
                if let Some(e) = part.refused {
                    return Err(e);
                }
                if matches!(part.kind, OpKind::Promote | OpKind::Demote) && manager_missing {
                    return Err(self.no_managers());
                }
                // A batch with a command in the failed request (or after it) failed whole.
                let unsent = part.answers.iter().any(|(_, a)| match a {
                    Answer::Key(k) => position.get(k.as_str()).is_some_and(|p| *p >= sent_upto),
                    Answer::Known(_) => false,
                });
                if let (true, Some((_, e))) = (unsent, &failed) {
                    return Err(e.clone());
                }
                Ok(part
                    .answers
                    .into_iter()
                    .filter_map(|(op, answer)| match answer {
                        Answer::Known(o) => Some(o),
                        Answer::Key(key) => outcome(part.kind, &op, &key, &res, &listed, &dialog),
                    })
                    .collect())
            })
            .collect()
    }

    /// The commands of one batch, appended to `cmds`, and where each member's answer will be.
    fn commands(
        &self,
        chat: u64,
        batch: &Batch,
        me: Option<&MemberId>,
        cmds: &mut Vec<Cmd>,
    ) -> Part {
        let mut part = Part {
            kind: batch.kind,
            answers: Vec::new(),
            refused: None,
        };
        let refuse = |part: &mut Part, e: ProviderError| {
            part.answers.clear();
            part.refused = Some(e);
        };
        match batch.kind {
            OpKind::Add => {
                for chunk in batch.ops.chunks(ADD_IDS_PER_COMMAND) {
                    let key = keyed(cmds, "add");
                    let mut text = format!("im.chat.user.add?CHAT_ID={chat}");
                    for op in chunk {
                        match user_id(&op.member) {
                            Ok(id) => {
                                let _ = write!(text, "&USERS[]={id}");
                            }
                            Err(e) => {
                                refuse(&mut part, e);
                                return part;
                            }
                        }
                        part.answers.push((op.clone(), Answer::Key(key.clone())));
                    }
                    // Sent explicitly: its default changed between doc revisions (bitrix24.md §3).
                    text.push_str("&HIDE_HISTORY=N");
                    cmds.push(Cmd::new(key, "im.chat.user.add", text));
                }
            }
            OpKind::Remove => {
                for op in &batch.ops {
                    // The planner never removes the acting user; this is the last line of defence.
                    if Some(&op.member) == me {
                        part.answers.push((
                            op.clone(),
                            Answer::Known(MemberOutcome::failed(
                                op.member.clone(),
                                "SELF",
                                "rosterd's own identity is never removed",
                            )),
                        ));
                        continue;
                    }
                    let id = match user_id(&op.member) {
                        Ok(id) => id,
                        Err(e) => {
                            refuse(&mut part, e);
                            return part;
                        }
                    };
                    let key = keyed(cmds, &format!("del{id}"));
                    cmds.push(Cmd::new(
                        key.clone(),
                        "im.chat.user.delete",
                        format!("im.chat.user.delete?CHAT_ID={chat}&USER_ID={id}"),
                    ));
                    part.answers.push((op.clone(), Answer::Key(key)));
                }
            }
            OpKind::Promote | OpKind::Demote => {
                if self.managers.load(Ordering::Relaxed) == 2 {
                    refuse(&mut part, self.no_managers());
                    return part;
                }
                for op in &batch.ops {
                    let (id, flag) = match (user_id(&op.member), manager_flag(batch.kind, op)) {
                        (Ok(id), Ok(flag)) => (id, flag),
                        (Err(e), _) | (_, Err(e)) => {
                            refuse(&mut part, e);
                            return part;
                        }
                    };
                    let key = keyed(cmds, &format!("mgr{id}"));
                    cmds.push(Cmd::new(
                        key.clone(),
                        "im.chat.setManager",
                        format!("im.chat.setManager?CHAT_ID={chat}&USER_ID={id}&IS_MANAGER={flag}"),
                    ));
                    part.answers.push((op.clone(), Answer::Key(key)));
                }
            }
            OpKind::TransferOwner => {
                for op in &batch.ops {
                    let id = match user_id(&op.member) {
                        Ok(id) => id,
                        Err(e) => {
                            refuse(&mut part, e);
                            return part;
                        }
                    };
                    let key = keyed(cmds, "owner");
                    cmds.push(Cmd::new(
                        key.clone(),
                        "im.chat.setOwner",
                        format!("im.chat.setOwner?CHAT_ID={chat}&USER_ID={id}"),
                    ));
                    part.answers.push((op.clone(), Answer::Key(key)));
                }
            }
            kind @ (OpKind::Ban | OpKind::Unban | OpKind::Mute | OpKind::Unmute) => {
                refuse(
                    &mut part,
                    ProviderError::fatal(format!(
                        "provider {}: Bitrix24 chats have no bans or member mutes ({kind})",
                        self.instance
                    )),
                );
            }
        }
        part
    }
}

/// The result of a batch none of whose commands went out.
fn finish_unsent(part: Part) -> Result<Vec<MemberOutcome>, ProviderError> {
    match part.refused {
        Some(e) => Err(e),
        None => Ok(part
            .answers
            .into_iter()
            .filter_map(|(_, a)| match a {
                Answer::Known(o) => Some(o),
                Answer::Key(_) => None,
            })
            .collect()),
    }
}

/// A command key that sorts in sending order (serde_json's map sorts keys and the portal runs
/// commands in key order) and is never numeric (PHP would turn the map into a list).
fn keyed(cmds: &[Cmd], name: &str) -> String {
    format!("c{:03}_{name}", cmds.len())
}

/// One member's outcome from the packed answers and the re-reads; `None` where the portal said
/// nothing of it (the engine reports that as a failure).
fn outcome(
    kind: OpKind,
    op: &Op,
    key: &str,
    res: &BatchResult,
    listed: &Option<BTreeSet<u64>>,
    dialog: &Option<Dialog>,
) -> Option<MemberOutcome> {
    let m = op.member.clone();
    let id = user_id(&op.member).ok()?;
    let error = res.errors.get(key);
    Some(match kind {
        OpKind::Add => match (error, listed) {
            (Some((c, d)), _) => MemberOutcome::failed(m, c.clone(), d.clone()),
            (None, Some(l)) if l.contains(&id) => MemberOutcome::done(m),
            (None, Some(_)) => MemberOutcome::failed(
                m,
                "NOT_ADDED",
                "Bitrix24 accepted the add but the user is not in the chat: the id is unknown, \
                 inactive or outside the acting user's extranet scope",
            ),
            (None, None) => MemberOutcome::failed(
                m,
                "UNVERIFIED",
                "the add was sent but the chat could not be re-listed to verify it",
            ),
        },
        OpKind::Remove => match error {
            None if res.ok.contains_key(key) => MemberOutcome::done(m),
            None => return None,
            Some((c, _)) if c.eq_ignore_ascii_case("USER_NOT_FOUND") => MemberOutcome::already(m),
            // Legacy portals answer every delete failure with WRONG_REQUEST, "not a member"
            // included; the re-list tells which it was.
            Some((c, d)) if c.eq_ignore_ascii_case("WRONG_REQUEST") => match listed {
                Some(l) if !l.contains(&id) => MemberOutcome::already(m),
                _ => MemberOutcome::failed(m, c.clone(), d.clone()),
            },
            Some((c, d)) => MemberOutcome::failed(m, c.clone(), d.clone()),
        },
        OpKind::Promote | OpKind::Demote => {
            let want = manager_flag(kind, op).is_ok_and(|f| f == "Y");
            match (error, dialog) {
                (Some((c, d)), _) => MemberOutcome::failed(m, c.clone(), d.clone()),
                (None, Some(d)) if d.managers.contains(&id) == want => MemberOutcome::done(m),
                (None, Some(_)) => MemberOutcome::failed(
                    m,
                    "NOT_CHANGED",
                    "setManager answered true but the manager list did not change (the user is \
                     not a member, or the acting user is not the chat owner)",
                ),
                (None, None) => MemberOutcome::failed(
                    m,
                    "UNVERIFIED",
                    "the change was sent but the chat could not be re-read to verify it",
                ),
            }
        }
        // The re-read decides: a repeat after a retried batch answers WRONG_REQUEST (we are no
        // longer the owner) although the transfer holds.
        _ => match (dialog, error) {
            (Some(d), _) if d.owner == id => MemberOutcome::done(m),
            (_, Some((c, d))) => MemberOutcome::failed(m, c.clone(), d.clone()),
            _ => MemberOutcome::failed(
                m,
                "NOT_CHANGED",
                "setOwner answered but the chat's owner did not change",
            ),
        },
    })
}
