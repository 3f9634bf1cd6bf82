// A filter that misbehaves: it never returns. The host stops it when the evaluation's fuel runs
// out (error kind `fuel`), counts no match, rebuilds the instance and keeps running. The same
// scenario is in Rust, C and Go (examples/filters/{rust,c,go}/endless-loop); host/tests/sdk_examples.rs
// runs them all. (Not next to the other examples: those must give verdicts.)
function endlessLoop(event) {
  let rounds = 0;
  while (!('never' in event.data)) rounds++;
  return rounds > 0;
}
