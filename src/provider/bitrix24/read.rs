//! Reads of chats that start together ride together: every chat read that is waiting when one
//! goes out joins the same `batch` request (its dialog and member list, two commands each), and
//! the acting user's `profile` rides along the first time. Each answer goes back to the chat
//! it was for; one chat's refusal fails only that chat.

use std::collections::BTreeSet;

use tokio::sync::oneshot;

use crate::ctx::Ctx;
use crate::model::{LiveGroup, MemberId};
use crate::provider::ProviderError;

use super::{BatchResult, Bitrix24, Cmd, Dialog, MAX_COMMANDS, id_of, parse_ids};

/// Chats one read request carries: two commands each, and room for `profile`.
const CHATS_PER_READ: usize = (MAX_COMMANDS - 1) / 2;

/// A chat read waiting for a request to carry it.
pub(super) struct Waiting {
    chat: u64,
    tx: oneshot::Sender<Result<LiveGroup, ProviderError>>,
}

impl Bitrix24 {
    /// Read one chat, with whichever other chat reads are waiting at the same moment.
    pub(super) async fn read_chat(&self, ctx: &Ctx, chat: u64) -> Result<LiveGroup, ProviderError> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiting { chat, tx });
        // Reads started together (the engine plans every group at once) are queued by now.
        tokio::task::yield_now().await;
        loop {
            let taken: Vec<Waiting> = {
                let mut q = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                let n = q.len().min(CHATS_PER_READ);
                q.drain(..n).collect()
            };
            if taken.is_empty() {
                break;
            }
            self.read_together(ctx, taken).await;
        }
        rx.await.unwrap_or_else(|_| {
            Err(ProviderError::transient(format!(
                "provider {}: chat {chat}: the shared read was abandoned",
                self.instance
            )))
        })
    }

    /// One request for `chats`, each answer sent to its reader.
    async fn read_together(&self, ctx: &Ctx, chats: Vec<Waiting>) {
        let known_me = self.me.get().cloned();
        let mut cmds = Vec::with_capacity(chats.len() * 2 + 1);
        if known_me.is_none() {
            cmds.push(Cmd::new("a_profile".into(), "profile", "profile".into()));
        }
        // The dialog goes first: for a chat we cannot see, the member list answers `[]`.
        for (i, w) in chats.iter().enumerate() {
            let chat = w.chat;
            cmds.push(Cmd::new(
                format!("c{i:03}_dialog"),
                "im.dialog.get",
                format!("im.dialog.get?DIALOG_ID=chat{chat}"),
            ));
            cmds.push(Cmd::new(
                format!("c{i:03}_users"),
                "im.chat.user.list",
                format!("im.chat.user.list?CHAT_ID={chat}"),
            ));
        }
        let label = if chats.len() == 1 {
            "read chat"
        } else {
            "read chats"
        };
        let res = match self.batch(ctx, &cmds, false, label).await {
            Ok(res) => res,
            Err(e) => {
                for w in chats {
                    let _ = w.tx.send(Err(e.clone()));
                }
                return;
            }
        };
        let me = match known_me {
            Some(me) => Ok(me),
            None => self.me_from(&res),
        };
        for (i, w) in chats.into_iter().enumerate() {
            let live = match &me {
                Ok(me) => self.chat_from(&res, i, w.chat, me.clone()),
                Err(e) => Err(e.clone()),
            };
            let _ = w.tx.send(live);
        }
    }

    /// The acting user from a read's `profile` answer, kept for the client's lifetime.
    fn me_from(&self, res: &BatchResult) -> Result<MemberId, ProviderError> {
        let id = match (res.ok.get("a_profile"), res.errors.get("a_profile")) {
            (Some(v), _) => v.get("ID").and_then(id_of),
            (None, Some((c, d))) => {
                return Err(ProviderError::fatal(format!(
                    "provider {}: profile: {c}: {d}",
                    self.instance
                ))
                .with_code(c.clone()));
            }
            (None, None) => None,
        };
        let me = MemberId(
            id.ok_or_else(|| ProviderError::fatal("profile: the answer has no user ID"))?
                .to_string(),
        );
        let _ = self.me.set(me.clone());
        Ok(me)
    }

    /// Chat number `i` of a shared read.
    fn chat_from(
        &self,
        res: &BatchResult,
        i: usize,
        chat: u64,
        me: MemberId,
    ) -> Result<LiveGroup, ProviderError> {
        let unreadable = |key: &str, what: &str| -> ProviderError {
            match res.errors.get(key) {
                Some((c, d)) => ProviderError::fatal(format!(
                    "provider {}: chat {chat} cannot be read ({what}: {c}: {d}); the acting user \
                     {me} must be a member of it, and the chat must exist",
                    self.instance
                ))
                .with_code(c.clone()),
                None => ProviderError::transient(format!(
                    "provider {}: chat {chat}: the batch returned no {what} answer",
                    self.instance
                )),
            }
        };
        let (dk, uk) = (format!("c{i:03}_dialog"), format!("c{i:03}_users"));
        let dialog = Dialog::parse(
            res.ok
                .get(&dk)
                .ok_or_else(|| unreadable(&dk, "im.dialog.get"))?,
        )?;
        let ids: BTreeSet<u64> = parse_ids(
            res.ok
                .get(&uk)
                .ok_or_else(|| unreadable(&uk, "im.chat.user.list"))?,
        )?;
        self.live_group(chat, &dialog, &ids, me)
    }
}
