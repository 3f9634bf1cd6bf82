// Weekend activity in the German-speaking markets, by the event's own timestamp.
function weekendDach(event) {
  const day = new Date(event.created_at).getUTCDay();
  return ['de', 'at', 'ch'].includes(event.market) && (day === 0 || day === 6);
}
