//! Runs last: the suite may repeat at most `retries::BUDGET` measurements,
//! each only with evidence (tests/common/retries.rs). More means the
//! measurements, or the shaper, are not what the tests claim.

mod common;

use common::retries;

#[test]
fn the_suite_stayed_within_its_retry_budget() {
    let used = retries::used();
    match retries::ledger() {
        Some(ledger) => println!("retries used in this run: {} (budget {}; {})", used.len(), retries::BUDGET, ledger.display()),
        None => println!("not a run of ./test.sh ({} unset): no measurement could be repeated", retries::RUN_VAR),
    }
    for r in &used {
        println!("  {r}");
    }
    assert!(used.len() <= retries::BUDGET, "{} retries: {used:#?}", used.len());
}
