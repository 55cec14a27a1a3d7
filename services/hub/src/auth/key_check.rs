//! At start, before anything reads a secret: are this hub's sealing keys the ones the store's
//! secrets were sealed with? A backup restored without its `secrets.key` used to start with a
//! fresh key, skip every subscription it could no longer open and still show them `active`
//! with `/ready` passing; now the start is refused with what to do.

use hub_store::Store;

use super::sealed::Sealer;

/// Refuse to start when a configured key differs from the one recorded under its id, when a
/// key was just made over a store that already holds sealed values, or when sealed values
/// name a recorded key that is no longer configured. Otherwise record the configured keys.
pub async fn check(store: &Store, sealer: &Sealer) -> anyhow::Result<()> {
    let recorded = store.sealing_keys().await?;
    let refuse = |why: String| -> anyhow::Result<()> {
        // a key file this start made over a store sealed with another one would, if kept,
        // be mistaken for the right one at the next start
        if let Some(path) = sealer.created_local() {
            let _ = std::fs::remove_file(path);
        }
        anyhow::bail!("{why}")
    };
    // first: its message says what happened (the key file was missing)
    if let Some(path) = sealer.created_local() {
        let sealed = store.count_sealed(None).await?;
        if sealed > 0 || recorded.contains_key("local") {
            return refuse(format!(
                "{} was missing, so a new key was about to be made, but this store's \
                 secrets were sealed with another one ({sealed} subscription(s) hold sealed \
                 values; a backup restored without its secrets.key?): put the original \
                 secrets.key back",
                path.display()
            ));
        }
    }
    for (id, fp) in sealer.fingerprints() {
        if let Some(stored) = recorded.get(id)
            && stored != fp
        {
            return refuse(format!(
                "secrets key '{id}' is not the key this store's secrets were sealed with \
                 (a backup restored without its secrets.key, or secrets.keys.{id} changed): \
                 put the original key back (the data directory's secrets.key, or \
                 secrets.keys.{id}); without it the subscriptions' webhook secrets, client \
                 certificates and credential headers cannot be read"
            ));
        }
    }
    for id in recorded.keys() {
        if sealer.fingerprints().any(|(k, _)| k == id) {
            continue;
        }
        let sealed = store.count_sealed(Some(id)).await?;
        if sealed > 0 {
            return refuse(format!(
                "{sealed} subscription(s) hold secrets sealed with key '{id}', which is not \
                 configured: keep it in secrets.keys until those values are rewritten"
            ));
        }
    }
    for (id, fp) in sealer.fingerprints() {
        store.record_sealing_key(id, fp).await?;
    }
    Ok(())
}
