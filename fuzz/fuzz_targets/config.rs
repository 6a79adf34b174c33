//! The config parser, `Config::parse` (what `orchestrator` and `orchestrator validate` run on a
//! `pipeline.toml`). A config that loads must summarise; one that does not must list at least one
//! problem, each placed inside the text when it is placed at all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_fuzz::assert_problems;
use orchestrator_server::Config;

fuzz_target!(|data: &[u8]| {
    // A file that is not UTF-8 is refused before parsing (`Config::load` reads a `String`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => assert!(!config.summary().is_empty()),
        Err(error) => assert_problems(text, &error),
    }
});
