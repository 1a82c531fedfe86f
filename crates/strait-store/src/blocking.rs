//! Block lists (XEP-0191): per account, the JIDs (bare, full or domain) whose stanzas the
//! server drops or refuses on the account's behalf.

use crate::Result;

/// Block lists. Entries are JIDs exactly as given (callers normalize them first); each
/// entry is stored once.
pub trait BlockingStore {
    /// The account's blocked JIDs, sorted.
    fn blocklist(&self, owner: &str) -> Result<Vec<String>>;
    /// Adds JIDs to the block list (already-blocked ones are kept once).
    /// [`crate::StoreError::NotFound`] if `owner` is not an account.
    fn block(&self, owner: &str, jids: &[String]) -> Result<()>;
    /// Removes JIDs from the block list (absent ones are ignored).
    fn unblock(&self, owner: &str, jids: &[String]) -> Result<()>;
    /// Empties the block list.
    fn unblock_all(&self, owner: &str) -> Result<()>;
}
