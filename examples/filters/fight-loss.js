function(event) { return event.getData().get('result') === 'loss' }
