// A real OpenID Connect provider for Herald's demo and tests: panva's oidc-provider
// (OpenID Certified) with its development login page, where any user name logs in.
//
//   node tools/oidc/provider.mjs
//
// Settings (environment):
//   OIDC_PORT          port to listen on, 127.0.0.1 only (default 3001)
//   HERALD_PUBLIC_URL  Herald's public URL; its /auth/callback is the registered
//                      redirect URI (default http://127.0.0.1:3000)
//   OIDC_AUDIENCE      the audience of access tokens for Herald's API
//                      (default urn:herald:api)
//   OIDC_ACCESS_TOKEN_TTL  lifetime of those access tokens in seconds (default 3600)
//
// Users: `admin` (group herald-admins), `alice` (team acme), `bob` (team globex); any
// other name logs in as an owner without a team. Clients:
//   herald / herald-dev-secret       the console (authorization code + PKCE)
//   herald-public                    the same as a public client (PKCE alone)
//   acme-ci / acme-ci-secret         an API client (client_credentials → JWT access token)
// Prints "oidc provider ready at <issuer>" once it listens.

import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT || 3001);
const issuer = `http://127.0.0.1:${port}`;
const herald = (process.env.HERALD_PUBLIC_URL || 'http://127.0.0.1:3000').replace(/\/$/, '');
const audience = process.env.OIDC_AUDIENCE || 'urn:herald:api';
// Lifetime of API access tokens in seconds (tests make short-lived ones).
const accessTokenTTL = Number(process.env.OIDC_ACCESS_TOKEN_TTL || 3600);
const apiScopes = 'notifications:write notifications:read endpoints:read endpoints:write';

const users = {
  admin: { email: 'admin@herald.test', name: 'Ada Admin', groups: ['herald-admins'] },
  alice: { email: 'alice@acme.test', name: 'Alice Owner', groups: ['acme'], team: 'acme' },
  bob: { email: 'bob@globex.test', name: 'Bob Owner', groups: ['globex'], team: 'globex' },
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'herald',
      client_secret: 'herald-dev-secret',
      redirect_uris: [`${herald}/auth/callback`],
      post_logout_redirect_uris: [`${herald}/`],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'herald-public',
      redirect_uris: [`${herald}/auth/callback`],
      post_logout_redirect_uris: [`${herald}/`],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    },
    {
      client_id: 'acme-ci',
      client_secret: 'acme-ci-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: apiScopes,
    },
  ],
  scopes: ['openid', 'email', 'profile', 'groups', ...apiScopes.split(' ')],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups', 'team'],
  },
  // Email, name and groups in the ID token itself (Herald reads them from there).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  cookies: { keys: ['herald-dev-oidc-cookie-key'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      email_verified: true,
      ...(users[id] || { email: `${id}@example.test`, name: id, groups: [] }),
    }),
  }),
  // First-party clients: no consent screen, every requested scope granted.
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: apiScopes,
        audience,
        accessTokenTTL,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc provider ready at ${issuer}`);
});
