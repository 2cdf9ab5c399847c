//! Pools that run as other users: their resolved identities (src/identity.rs),
//! and their access to the master's sockets.
//!
//! A worker that runs as another user must still ack: through the control
//! socket (`ack = "manual"`), its `-g` fd (nothing to grant), or the notify
//! socket (`ack = "notify"`). The socket files keep their mode (0600 by
//! default); an ACL grants read-write to exactly the pools' users
//! (src/control/acl.rs), and the master serves connections from those users
//! worker messages only ([`Master::worker_only`]). At start, a child with each
//! manual-ack pool's identity proves it can reach the control socket, so a
//! socket in a directory the user cannot enter is refused at once, not after
//! every worker has missed its ack.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Master, MasterError};
use crate::config::identity::Identity;
use crate::config::{AckMode, Config};
use crate::control::server::ConnId;
use crate::identity::{self, Resolved};

/// Resolved identities by what the file said (pools with the same settings
/// share one).
#[derive(Debug, Default)]
pub(super) struct Identities {
    cache: HashMap<Identity, Arc<Resolved>>,
}

impl Identities {
    /// Every pool of `config`, resolved: at start and on reload, so that a
    /// user deleted or a limit made impossible is refused with its key.
    pub(super) fn load(config: &Config) -> Result<Identities, Vec<String>> {
        let resolved = identity::resolve_config(config)?;
        let mut cache = HashMap::new();
        for (name, r) in resolved {
            if let Some(spec) = config.pools.get(&name) {
                cache.insert(spec.identity.clone(), Arc::new(r));
            }
        }
        Ok(Identities { cache })
    }

    /// For a spawn; an identity not seen at load (an older release's, for
    /// a rollback) is resolved now.
    pub(super) fn get(&mut self, id: &Identity) -> Result<Option<Arc<Resolved>>, String> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(r) = self.cache.get(id) {
            return Ok(Some(r.clone()));
        }
        match identity::resolve(id) {
            Ok(r) => {
                let r = Arc::new(r);
                self.cache.insert(id.clone(), r.clone());
                Ok(Some(r))
            }
            Err(errs) => Err(errs
                .iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// The users workers run as, other than the master's own.
    pub(super) fn uids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cache.values().filter_map(|r| r.uid).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Grant the pools' users access to the control socket, and check that each
/// manual-ack pool's workers can reach it.
pub(super) fn grant_control(
    config: &Config,
    identities: &Identities,
    path: &std::path::Path,
) -> Result<(), MasterError> {
    let uids = identities.uids();
    if let Err(e) = crate::control::acl::grant(path, config.control.mode, &uids) {
        if uids.is_empty() {
            log::debug!("control socket {}: clearing its ACL: {e}", path.display());
            return Ok(());
        }
        return Err(MasterError::Reach(format!(
            "control socket {}: cannot let the pools' users ({uids:?}) ack through it: {e}; \
             put the socket on a filesystem with ACLs, or use command_socket_as_fd or ack = \"timer\"",
            path.display()
        )));
    }
    for (name, spec) in &config.pools {
        if spec.ack != AckMode::Manual || spec.command_socket_as_fd {
            continue;
        }
        let Some(Some(r)) = identities
            .cache
            .get(&spec.identity)
            .map(|r| r.uid.map(|_| r))
        else {
            continue;
        };
        if let Err(why) = identity::can_reach(r, path) {
            let key = format!("pools.{name}.user");
            return Err(MasterError::Reach(format!(
                "{}: {key}: the pool's workers could not ack: {why} (control socket {}); \
                 move the socket (e.g. to /run/NAME/), or use command_socket_as_fd",
                config.locate(&key),
                path.display()
            )));
        }
    }
    Ok(())
}

impl Master {
    /// Whether `conn` comes from a pool's user rather than an operator: it
    /// may send worker messages only.
    pub(super) fn worker_only(&self, conn: ConnId) -> bool {
        // A `-g` channel's peer is the master itself (a socketpair): it
        // speaks with its worker's rights.
        if let Some(owner) = self.control.owner(conn) {
            return self
                .pool_of_pid(owner)
                .and_then(|p| self.pools.get(&p))
                .and_then(|e| e.pool.worker_by_pid(owner))
                .is_some_and(|w| w.spec.identity.user.is_some());
        }
        let (uid, _) = self.control.peer(conn);
        let me = nix::unistd::geteuid().as_raw();
        match uid {
            Some(u) => u != me && u != 0 && !self.config.control.allow_uids.contains(&u),
            None => true,
        }
    }

    /// Whether a peer uid may connect at all: the master's, root, the allowed
    /// ones, and the pools' users (for worker messages).
    pub(super) fn uid_allowed(&self, uid: u32) -> bool {
        let me = nix::unistd::geteuid().as_raw();
        uid == me
            || uid == 0
            || self.config.control.allow_uids.contains(&uid)
            || self.identities.uids().contains(&uid)
    }

    /// After a reload: the new set of users gets access; a failure is logged
    /// (the reload itself already applied).
    pub(super) fn regrant_sockets(&mut self) {
        if let Err(e) = grant_control(&self.config, &self.identities, self.control.path()) {
            log::error!("{e}");
        }
        self.grant_notify();
    }

    /// The notify socket file, once bound, gets the same grant.
    pub(super) fn grant_notify(&self) {
        let Some(path) = self.notify_ack.as_ref().and_then(|n| n.parts().path) else {
            return;
        };
        let uids = self.identities.uids();
        if let Err(e) = crate::control::acl::grant(&path, self.config.control.mode, &uids) {
            if !uids.is_empty() {
                log::error!(
                    "worker notify socket {}: cannot let the pools' users ({uids:?}) send to it: {e}; their READY=1 will not arrive",
                    path.display()
                );
            }
        }
    }
}
