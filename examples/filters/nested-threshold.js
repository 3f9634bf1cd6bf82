// A numeric threshold on a nested `data` field: players past level 10. The same scenario is in
// Rust, C and Go (examples/filters/{rust,c,go}/); like them, only a JSON number counts.
(event) => {
  const level = event.data?.player?.level;
  return typeof level === 'number' && level > 10;
}
