// /api/docs: Swagger UI over the management API's OpenAPI document, served by Keyhouse
// itself (no CDN). The page names the document in data-openapi; no inline script (CSP).
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-openapi"),
    domNode: root,
    deepLinking: true,
    // The default validator badge would ask validator.swagger.io about the document.
    validatorUrl: null,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
