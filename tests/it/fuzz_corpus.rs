//! The committed fuzz corpus, replayed by the fuzz targets' own harnesses: every input a fuzzer
//! kept (and every crash or hang it found, once fixed) stays a test without the fuzz build.

use std::path::PathBuf;

#[path = "../../fuzz/harness/load_tree.rs"]
mod load_tree;
#[path = "../../fuzz/harness/responses.rs"]
mod responses;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(format!("fuzz/corpus/{target}"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz/corpus/{target} holds seeds");
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_load_tree_input_of_the_corpus_loads_without_a_panic() {
    let inputs = corpus("load_tree");
    // The input that once walked the whole file system (`manifests: /`, found by the fuzzer
    // after 340,651 runs, over 30 s): now bounded by the scan's entry budget.
    assert!(
        inputs
            .iter()
            .any(|(p, _)| p.ends_with("manifests-at-filesystem-root"))
    );
    for (path, bytes) in inputs {
        eprintln!("{}", path.display());
        load_tree::run(&bytes);
    }
}

#[test]
fn every_responses_input_of_the_corpus_is_parsed_without_a_panic() {
    for (path, bytes) in corpus("responses") {
        eprintln!("{}", path.display());
        responses::run(&bytes);
    }
}
