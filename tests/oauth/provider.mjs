// A real OpenID provider (oidc-provider, with its development login and
// consent pages) on 127.0.0.1, for tests/e2e/test_oauth.py.
//
//   node provider.mjs PORT CLIENTS_JSON
//
// CLIENTS_JSON is an array of oidc-provider client metadata (client_id,
// client_secret, redirect_uris, token_endpoint_auth_method). Any login name
// with any password signs in, and the login name is the subject. Prints
// "listening <issuer>" once it accepts connections.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const clients = JSON.parse(process.argv[3]).map((c) => ({
  grant_types: ['authorization_code'],
  response_types: ['code'],
  ...c,
}));
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  // Every client must send a code_challenge (S256 only, the default).
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['roomcast-test-cookie-key'] },
  // The subject is the login name typed into the development login page.
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
