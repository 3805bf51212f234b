//! openraft's storage conformance suite, run on both implementations of our storage seam.

use openraft::testing::{StoreBuilder, Suite};
use qm_coordinator::raft::log_store::LogStore;
use qm_coordinator::raft::mem_store::MemStore;
use qm_coordinator::raft::sled_store::SledStore;
use qm_coordinator::raft::state_machine::StateMachine;
use qm_coordinator::raft::store::Store;
use qm_coordinator::raft::{StorageError, TypeConfig};

struct Mem;

impl StoreBuilder<TypeConfig, LogStore<MemStore>, StateMachine<MemStore>, ()> for Mem {
    async fn build(&self) -> Result<((), LogStore<MemStore>, StateMachine<MemStore>), StorageError> {
        let store = MemStore::new();
        Ok(((), LogStore::new(store.clone()), StateMachine::open(store)?))
    }
}

struct Sled;

impl StoreBuilder<TypeConfig, LogStore<SledStore>, StateMachine<SledStore>, tempfile::TempDir> for Sled {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore<SledStore>, StateMachine<SledStore>), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path())?;
        Ok((dir, LogStore::new(store.clone()), StateMachine::open(store)?))
    }
}

#[test]
fn memory_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(Mem)
}

#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(Sled)
}

#[test]
fn sled_store_refuses_another_format_version() {
    use qm_coordinator::raft::store::{Keys, Space, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = SledStore::open(dir.path()).expect("open");
        store.batch(Space::Meta, vec![Write::Put(Keys::FORMAT.to_vec(), 99u32.to_be_bytes().to_vec())]).expect("put");
    }
    let err = SledStore::open(dir.path()).expect_err("a foreign format is refused");
    assert!(err.to_string().contains("format version 99"), "{err}");
}

/// A data directory written before members carried a peer address (format 2) is refused with
/// what to do about it.
#[test]
fn sled_store_refuses_an_older_format_saying_what_to_do() {
    use qm_coordinator::raft::store::{Keys, Space, Write, STORE_FORMAT_VERSION};
    assert_eq!(STORE_FORMAT_VERSION, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = SledStore::open(dir.path()).expect("open");
        store.batch(Space::Meta, vec![Write::Put(Keys::FORMAT.to_vec(), 2u32.to_be_bytes().to_vec())]).expect("put");
    }
    let err = SledStore::open(dir.path()).expect_err("an older format is refused").to_string();
    assert!(err.contains("format version 2 was written by an older qm"), "{err}");
    assert!(err.contains("new, empty data directory") && err.contains("qm cluster add"), "{err}");
}
