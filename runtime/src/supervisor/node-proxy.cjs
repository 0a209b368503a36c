// openshell: route node's default http/https agents through the sandbox's proxy.
//
// Loaded with NODE_OPTIONS=--require by every node process in a sandbox with a network.
// node from 22.21 and 24 on honours NODE_USE_ENV_PROXY=1 (set too) and this file does
// nothing there; older node ignores the proxy variables, so its requests would go
// straight out and be refused as bypass attempts. Here https requests go through a
// CONNECT tunnel, http requests in absolute form (the proxy decides both), hosts in
// NO_PROXY directly. Global fetch (undici) is not covered on those versions.
'use strict';
(function openshellProxy() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major >= 24 || (major === 22 && minor >= 21)) return;
  const raw = process.env.HTTPS_PROXY || process.env.https_proxy ||
    process.env.HTTP_PROXY || process.env.http_proxy;
  if (!raw) return;
  let proxy;
  try {
    proxy = new URL(raw);
  } catch (_) {
    return;
  }
  const proxyHost = proxy.hostname;
  const proxyPort = Number(proxy.port) || 80;
  const http = require('http');
  const https = require('https');
  const net = require('net');
  const tls = require('tls');
  const noProxy = (process.env.NO_PROXY || process.env.no_proxy || '')
    .split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  const direct = (host) => {
    const h = String(host || '').toLowerCase().replace(/^\[|\]$/g, '');
    return noProxy.some((s) => s === '*' || h === s ||
      h.endsWith(s.startsWith('.') ? s : '.' + s));
  };

  class TunnelAgent extends https.Agent {
    createConnection(options, done) {
      const host = options.host || options.hostname || 'localhost';
      const port = Number(options.port) || 443;
      if (direct(host)) return super.createConnection(options, done);
      const sock = net.connect(proxyPort, proxyHost);
      let head = Buffer.alloc(0);
      const fail = (err) => {
        sock.destroy();
        done(err);
      };
      const onData = (chunk) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > 65536) fail(new Error('openshell proxy: answer head too long'));
          return;
        }
        sock.removeListener('data', onData);
        sock.removeListener('error', fail);
        const status = head.toString('latin1', 0, end).split('\r\n')[0];
        if (!/^HTTP\/1\.[01] 200/.test(status)) {
          const body = head.toString('utf8', end + 4).trim();
          const err = new Error(`openshell proxy refused CONNECT ${host}:${port}: ${status}` +
            (body ? ` ${body}` : ''));
          err.code = 'ECONNREFUSED';
          return fail(err);
        }
        const opts = Object.assign({}, options, { socket: sock });
        delete opts.host;
        delete opts.port;
        delete opts.path;
        if (!opts.servername && !net.isIP(host)) opts.servername = host;
        done(null, tls.connect(opts));
      };
      sock.on('data', onData);
      sock.on('error', fail);
      sock.write(`CONNECT ${host}:${port} HTTP/1.1\r\nHost: ${host}:${port}\r\n\r\n`);
      return undefined;
    }
  }

  class ForwardAgent extends http.Agent {
    addRequest(req, options) {
      const host = options.host || options.hostname || 'localhost';
      if (!direct(host) && !req._header) {
        const port = Number(options.port) || 80;
        const authority = port === 80 ? host : `${host}:${port}`;
        if (!/^[a-z]+:\/\//i.test(req.path)) req.path = `http://${authority}${req.path}`;
        options = Object.assign({}, options, { host: proxyHost, hostname: proxyHost, port: proxyPort });
      }
      return super.addRequest(req, options);
    }
  }

  https.globalAgent = new TunnelAgent({ keepAlive: true });
  http.globalAgent = new ForwardAgent({ keepAlive: false });
})();
