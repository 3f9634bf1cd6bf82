// Events from the production game servers only, matched by host name.
e => /^foe-backend-\d+\.ig\.com$/.test(e.hostname) && e.getSystemType() === 'game'
