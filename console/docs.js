// Starts Swagger UI on this server's document (GET /docs). Swagger UI's own
// index.html does this in an inline script, which the pages' CSP forbids.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  // Deep links put a link inside each operation's button: a control inside a
  // control, which screen readers cannot tell apart (axe: nested-interactive).
  deepLinking: false,
  validatorUrl: null, // else the document is sent to validator.swagger.io
  persistAuthorization: false, // else the token is kept in localStorage
});

// Swagger UI leaves a few controls without a name a screen reader can say,
// or names them apart from what they show (CONTRACT.md, Browser pages: no
// critical or serious axe-core violation). It draws them as it goes (the
// Authorize dialog, a response), so they are named whenever they appear.
const NAMES = [
  [".close-modal", "Close"], // the dialog's X
  [".copy-to-clipboard button", "Copy to clipboard"], // beside the curl and a response body
  ["select#servers", "Servers"], // its <label> wraps it but holds no text
];

function nameTheUnnamed(root) {
  for (const [selector, name] of NAMES) {
    for (const element of root.querySelectorAll(`${selector}:not([aria-label])`)) {
      element.setAttribute("aria-label", name);
    }
  }
  // The curl command scrolls sideways when it is long (a token in it): a
  // keyboard reaches it, to scroll it.
  for (const block of root.querySelectorAll("pre.curl:not([tabindex])")) {
    block.setAttribute("tabindex", "0");
  }
  // "Authorize" read as "Apply credentials", "Logout" as "Remove authorization":
  // the name is to hold the words shown, for those who work the page by voice.
  for (const button of root.querySelectorAll("button[aria-label]")) {
    const shown = button.textContent.trim().toLowerCase();
    if (shown && !button.getAttribute("aria-label").toLowerCase().includes(shown)) {
      button.removeAttribute("aria-label");
    }
  }
}

const root = document.getElementById("swagger-ui");
nameTheUnnamed(root);
new MutationObserver(() => nameTheUnnamed(root)).observe(root, {
  childList: true,
  subtree: true,
  attributes: true,
  attributeFilter: ["aria-label"],
});
