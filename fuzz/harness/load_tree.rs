//! Loading and validating a tree from raw bytes: rosterd.yaml, people.yaml and one manifest,
//! separated by 0xFF bytes. Any panic is a crash; errors are the expected answer. Shared by the
//! fuzz target and the test that replays the committed corpus (`tests/it/fuzz_corpus.rs`).

pub fn run(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xFF);
    let root = parts.next().unwrap_or_default();
    let people = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("groups")).unwrap();
    std::fs::write(dir.path().join("rosterd.yaml"), root).unwrap();
    std::fs::write(dir.path().join("people.yaml"), people).unwrap();
    std::fs::write(dir.path().join("groups/g.yaml"), manifest).unwrap();
    // The tree is three files; an input naming `/` or `../..` stops after 1,000 entries (the
    // scan's budget, as `load` has it at 100,000) instead of walking this machine's disk.
    let loaded = rosterd::config::load_scanning_at_most(&dir.path().join("rosterd.yaml"), 1000);
    if let Ok(cfg) = loaded {
        // A valid tree's groups all name an instance it defines.
        for g in &cfg.groups {
            assert!(cfg.instances.contains_key(&g.provider), "{g:?}");
        }
    }
}
