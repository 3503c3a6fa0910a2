// A real OpenID Connect provider (node-oidc-provider, pinned in
// package-lock.json) on 127.0.0.1 over plain HTTP, for the server's
// single sign-on test (server/tests/server/sso.rs). Not for anything else:
// its login form (devInteractions) takes any password.
//
//   node tests/oidc/provider.mjs PORT REDIRECT_URI CLIENT_ID CLIENT_SECRET
//
// Accounts (the login typed in the form is the account id):
//   alice  groups ["tether-admins", "staff"]   → admin in the test's mapping
//   bob    groups ["tether-ops"]               → operator
//   root   groups ["tether-ops"]               → refused: a local user has that name
//   carol  no groups claim                      → refused (no default role)
// Prints "ready ISSUER" once listening; exits when stdin closes, so a
// test that dies cannot leave it behind.
import Provider from 'oidc-provider';

const [port, redirect, clientId, clientSecret] = process.argv.slice(2);
if (!port || !redirect || !clientId || !clientSecret) {
  console.error('usage: provider.mjs PORT REDIRECT_URI CLIENT_ID CLIENT_SECRET');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const groups = {
  alice: ['tether-admins', 'staff'],
  bob: ['tether-ops'],
  root: ['tether-ops'],
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  // Every claim in the ID token too (the server reads the role there).
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'groups'],
    email: ['email'],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['tether-test-only-cookie-key'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        const c = { sub: id, preferred_username: id, email: `${id}@example.test` };
        if (groups[id]) c.groups = groups[id];
        return c;
      },
    };
  },
});
// Quiet: the test reads stdout for "ready".
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
process.stdin.on('end', () => { server.close(); process.exit(0); });
process.stdin.resume();
