// A purchase of at least 50 EUR by a player past level 10.
(event) => event.event_name === 'purchase'
  && event.data.currency === 'EUR'
  && event.data.amount >= 50
  && event.data.player.level > 10
