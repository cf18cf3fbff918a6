//! Write requests of several chats that are ready at the same moment ride in one `batch`
//! request, as many whole sets of commands as 50 commands allow. Each rider's commands keep their
//! order (their keys get a rider prefix, and the portal runs commands in key order) and its
//! answers are handed back to it alone: one chat's failures never become another's.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::ctx::Ctx;
use crate::provider::ProviderError;

use super::{BatchResult, Bitrix24, Cmd, MAX_COMMANDS};

/// One chat's commands waiting for a request to carry them.
pub(super) struct Rider {
    cmds: Vec<Cmd>,
    tx: oneshot::Sender<Result<BatchResult, ProviderError>>,
}

impl Bitrix24 {
    /// Send `cmds` (at most 50) as a write, in a request shared with the other chats' writes
    /// waiting at the same moment.
    pub(super) async fn ride(
        &self,
        ctx: &Ctx,
        cmds: Vec<Cmd>,
        label: &'static str,
    ) -> Result<BatchResult, ProviderError> {
        let (tx, rx) = oneshot::channel();
        self.riders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rider { cmds, tx });
        // Writes of groups applied together are queued by now.
        tokio::task::yield_now().await;
        loop {
            let taken: Vec<Rider> = {
                let mut q = self.riders.lock().unwrap_or_else(|e| e.into_inner());
                let mut total = 0;
                let n = q
                    .iter()
                    .take_while(|r| {
                        total += r.cmds.len();
                        total <= MAX_COMMANDS
                    })
                    .count()
                    .max(usize::from(!q.is_empty()));
                q.drain(..n).collect()
            };
            if taken.is_empty() {
                break;
            }
            self.send_riders(ctx, taken, label).await;
        }
        rx.await.unwrap_or_else(|_| {
            Err(ProviderError::transient(format!(
                "provider {}: the shared write request was abandoned",
                self.instance
            )))
        })
    }

    async fn send_riders(&self, ctx: &Ctx, riders: Vec<Rider>, label: &'static str) {
        if riders.len() == 1 {
            let r = riders.into_iter().next().expect("one rider");
            let _ = r.tx.send(self.batch(ctx, &r.cmds, true, label).await);
            return;
        }
        let prefix = |j: usize| format!("r{j:02}");
        let cmds: Vec<Cmd> = riders
            .iter()
            .enumerate()
            .flat_map(|(j, r)| {
                r.cmds.iter().map(move |c| Cmd {
                    key: format!("{}{}", prefix(j), c.key),
                    method: c.method,
                    text: c.text.clone(),
                })
            })
            .collect();
        let res = self.batch(ctx, &cmds, true, label).await;
        for (j, r) in riders.into_iter().enumerate() {
            let own = match &res {
                Ok(all) => {
                    let p = prefix(j);
                    Ok(BatchResult {
                        ok: strip(&all.ok, &p),
                        errors: strip(&all.errors, &p),
                        time: strip(&all.time, &p),
                    })
                }
                Err(e) => Err(e.clone()),
            };
            let _ = r.tx.send(own);
        }
    }
}

/// The entries of one rider, under their own keys.
fn strip<V: Clone>(m: &BTreeMap<String, V>, prefix: &str) -> BTreeMap<String, V> {
    m.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}
