// Starts Swagger UI on this server's document (GET /docs). Swagger UI's own
// index.html does this in an inline script, which the pages' CSP forbids.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // else the document is sent to validator.swagger.io
  persistAuthorization: false, // else the token is kept in localStorage
});
