// An immediately invoked function that builds its configuration once and returns the filter.
(function () {
  const vips = new Set([12345, 777]);
  return function (event) {
    return event.getEventName() === 'login' && vips.has(event.getPlayerId());
  };
})()
