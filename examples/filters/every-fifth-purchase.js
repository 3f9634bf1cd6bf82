// Every fifth purchase of a player triggers: a filter of the player's state, for a campaign with
// "state": {"ttl": "30d", "max_bytes": 256}. Other events leave the state as it was. Its twins in
// Rust, C and Go are examples/filters/{rust,c,go}/every-fifth-purchase.
function(event, state) {
  if (event.event_name !== 'purchase') return false;
  state.purchases = (state.purchases || 0) + 1;
  return state.purchases % 5 === 0;
}
